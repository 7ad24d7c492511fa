// The CPU multi-tensor driver shared by every optimizer op.
//
// Work is cut into (tensor, chunk) items of at most kChunkElements elements,
// and at::parallel_for spreads the items over the intra-op threads. Cutting
// large tensors lets one 16M-element parameter use every thread; packing
// small tensors into the same item list keeps a ResNet's 160 biases and
// weights from paying one parallel region each.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastopt::cpu {

// 64K elements: large enough to amortise the per-item call, small enough
// that two threads stay balanced on a few-million-element parameter.
constexpr int64_t kChunkElements = 1 << 16;

struct WorkItem {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

class WorkItems {
 public:
  explicit WorkItems(const std::vector<int64_t>& numels) {
    for (int64_t t = 0; t < static_cast<int64_t>(numels.size()); ++t) {
      for (int64_t begin = 0; begin < numels[t]; begin += kChunkElements) {
        const int64_t end = std::min(begin + kChunkElements, numels[t]);
        items_.push_back({t, begin, end});
        starts_.push_back(total_);
        total_ += end - begin;
      }
    }
  }

  size_t size() const { return items_.size(); }
  const WorkItem& operator[](size_t k) const { return items_[k]; }

  // Calls fn(k, item) once per item, from several threads. Items never
  // overlap, so fn needs no locking; per-item results go to slot k of an
  // array sized size(), which keeps any reduction over them deterministic.
  //
  // Threads get equal shares of elements, not of items: each takes the items
  // that start in its range of the concatenated elements. (Split by item
  // count, a ResNet-50's layout, small tensors among large ones, gave one of
  // two threads 2.5 times the other's elements.)
  //
  // Each thread then calls done() once, after its last item: the place for
  // work owed once per thread, such as the fence after streamed stores.
  template <typename Fn, typename Done>
  void parallel_for(const Fn& fn, const Done& done) const {
    at::parallel_for(0, total_, kChunkElements, [&](int64_t begin, int64_t end) {
      size_t k = std::lower_bound(starts_.begin(), starts_.end(), begin) - starts_.begin();
      for (; k < items_.size() && starts_[k] < end; ++k) fn(k, items_[k]);
      done();
    });
  }
  template <typename Fn>
  void parallel_for(const Fn& fn) const {
    parallel_for(fn, [] {});
  }

 private:
  std::vector<WorkItem> items_;
  std::vector<int64_t> starts_;  // starts_[k]: elements before item k
  int64_t total_ = 0;
};

}  // namespace fastopt::cpu
