// The host side every CPU optimizer op shares around its kernel: the AMP skip,
// and the parallel walk over (tensor, chunk) work items with optional update
// norms.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <utility>
#include <vector>

#include "common/philox.h"
#include "common/tensor_lists.h"
#include "cpu/kernels/kernel_chunk.h"
#include "cpu/multi_tensor_apply.h"
#include "cpu/scalars.h"
#include "cpu/update_norms_output.h"

namespace fastopt::cpu {

// Whether AMP skips this step (found_inf set). A skipped step writes nothing,
// step counters included, except update_norms: zero, since nothing moved.
inline bool step_skipped(const c10::optional<at::Tensor>& found_inf,
                         const c10::optional<at::Tensor>& update_norms) {
  if (!found_inf.has_value() || read_scalar("found_inf", *found_inf) == 0.0) return false;
  if (update_norms.has_value()) update_norms->zero_();
  return true;
}

// How the op's params are stored (see ParamStorage), from its param_copies
// and rounding_seed arguments, which check_param_storage has validated.
inline ParamStorage param_storage(at::TensorList grads, at::TensorList param_copies,
                                  const c10::optional<at::Tensor>& rounding_seed) {
  ParamStorage s{};
  s.copies = !param_copies.empty();
  s.grad_dtype = grads.empty() ? c10::ScalarType::Float : grads[0].scalar_type();
  s.stochastic = rounding_seed.has_value();
  if (s.stochastic) {
    TORCH_CHECK(rounding_seed->is_cpu(), "fastopt: rounding_seed must be a CPU tensor for CPU params");
    const at::Tensor seed = rounding_seed->contiguous();
    const DropoutKey key = dropout_key(seed.const_data_ptr<int64_t>());
    s.key0 = key.k0;
    s.key1 = key.k1;
    s.offset0 = key.o0;
    s.offset1 = key.o1;
  }
  return s;
}

// The hyperparameters of each tensor of a call: row `tensor` of the hparams
// table when there is one (NOTE: [hyperparameter table]), otherwise the
// call's scalar arguments, the same for every tensor.
class Hyperparams {
 public:
  Hyperparams(const c10::optional<at::Tensor>& table, std::vector<double> scalars)
      : scalars_(std::move(scalars)) {
    if (table.has_value()) {
      table_ = table->contiguous();
      data_ = table_.const_data_ptr<double>();
    }
  }

  double operator()(size_t tensor, int column) const {
    return data_ != nullptr ? data_[tensor * scalars_.size() + column] : scalars_[column];
  }

  // Whether tensor i has a nonzero value in `column`. Weight decay is decided
  // per tensor, as torch decides it per param group: a zero rate must add
  // nothing, not 0 * an inf parameter (NaN), and its kernels skip the term.
  bool nonzero(size_t i, int column) const { return (*this)(i, column) != 0.0; }

 private:
  std::vector<double> scalars_;
  at::Tensor table_;
  const double* data_ = nullptr;
};

// Cuts the tensors of `flat` (N lists, param first, then optionally the param
// copies as list N) into work items and calls kernel(tensor, chunk) for
// each, in parallel; then fills update_norms (when given) and copies
// temporaries back into the caller's tensors.
template <int N, typename Kernel>
void run_fused_step(FlatTensorLists& flat, const c10::optional<at::Tensor>& update_norms,
                    const Kernel& kernel, const ParamStorage* storage = nullptr) {
  std::vector<int64_t> numels(flat.size());
  for (size_t i = 0; i < flat.size(); ++i) numels[i] = flat.numel(i);
  const WorkItems items(numels);
  UpdateNormsOutput norms(update_norms, flat.size(), items);
  const bool copies = flat.num_lists() > N && flat.has_list(N);
  items.parallel_for([&](size_t k, const WorkItem& item) {
    KernelChunk<N> chunk;
    for (int l = 0; l < N; ++l) chunk.lists[l] = flat.data_at(l, item.tensor, item.begin);
    chunk.numel = item.end - item.begin;
    chunk.norms = norms.slot(k);
    chunk.copy = copies ? flat.data_at(N, item.tensor, item.begin) : nullptr;
    chunk.tensor = item.tensor;
    chunk.first = item.begin;
    chunk.storage = storage;
    kernel(static_cast<size_t>(item.tensor), chunk);
  });
  norms.finish(items);
  flat.write_back();
}

}  // namespace fastopt::cpu
