#include "cpu/output_cache.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>
#include <c10/util/strides.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <string>

namespace fastopt::cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
// Below this, torch's allocator (glibc's heap, which keeps small blocks
// itself) serves the request: the page-fault cost is a large-tensor problem.
constexpr size_t kMinBytes = size_t{1} << 20;

// FASTOPT_CPU_CACHE_MB, strictly a whole number of megabytes: anything else
// (a unit, a sign, a fraction, an overflow) is an error that names the
// variable, rather than a silently different limit.
size_t default_limit() {
  const char* env = std::getenv("FASTOPT_CPU_CACHE_MB");
  if (env == nullptr || *env == '\0') return size_t{1024} << 20;
  constexpr size_t kMaxMegabytes = std::numeric_limits<size_t>::max() >> 20;
  size_t megabytes = 0;
  bool valid = true;
  for (const char* c = env; *c != '\0' && valid; ++c) {
    const bool digit = *c >= '0' && *c <= '9';
    valid = digit && megabytes <= (kMaxMegabytes - static_cast<size_t>(*c - '0')) / 10;
    if (valid) megabytes = megabytes * 10 + static_cast<size_t>(*c - '0');
  }
  TORCH_CHECK_VALUE(valid, "FASTOPT_CPU_CACHE_MB must be a whole number of megabytes (0 turns the cache off), got '",
                    env, "'");
  return megabytes << 20;
}

// A block handed out: its base and rounded size, the DataPtr's context.
struct Block {
  void* ptr;
  size_t bytes;
};

class OutputCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* ptr = take(bytes);
    if (ptr == nullptr) {
      ptr = std::aligned_alloc(kHugePage, bytes);
      if (ptr == nullptr) {
        // Memory may be held by the cache; give it back and try once more.
        empty();
        ptr = std::aligned_alloc(kHugePage, bytes);
      }
      TORCH_CHECK(ptr != nullptr, "fastopt: CPU out of memory allocating ", bytes, " bytes");
      // Huge pages: one fault per 2 MB on first touch, and fewer TLB misses
      // for the streaming kernels. Only advice; failure changes nothing.
      (void)madvise(ptr, bytes, MADV_HUGEPAGE);
    }
    return {ptr, new Block{ptr, bytes}, &OutputCache::release, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void set_limit(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = bytes;
    trim_locked();
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t limit = limit_;
    limit_ = 0;
    trim_locked();
    limit_ = limit;
  }

  OutputCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {cached_, limit_, hits_, misses_};
  }

  static OutputCache& get() {
    // Never destroyed: tensors may outlive static destruction at exit.
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

 private:
  // A cached block of exactly `bytes`, or null. Exact sizes only: training
  // repeats the same shapes, and a best fit would waste up to the block.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(bytes);
    if (it == free_.end()) {
      ++misses_;
      return nullptr;
    }
    ++hits_;
    void* ptr = it->second;
    free_.erase(it);
    cached_ -= bytes;
    return ptr;
  }

  static void release(void* ctx) {
    const Block* block = static_cast<Block*>(ctx);
    get().put(block->ptr, block->bytes);
    delete block;
  }

  void put(void* ptr, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= limit_) {
        free_.emplace(bytes, ptr);
        cached_ += bytes;
        return;
      }
    }
    std::free(ptr);
  }

  // Frees the largest blocks first until the cache fits its limit.
  void trim_locked() {
    while (cached_ > limit_ && !free_.empty()) {
      auto last = std::prev(free_.end());
      cached_ -= last->first;
      std::free(last->second);
      free_.erase(last);
    }
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // rounded size -> block
  size_t cached_ = 0;
  size_t limit_ = default_limit();
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

}  // namespace

void set_output_cache_limit(size_t bytes) { OutputCache::get().set_limit(bytes); }
void empty_output_cache() { OutputCache::get().empty(); }
OutputCacheStats output_cache_stats() { return OutputCache::get().stats(); }
c10::Allocator* output_allocator() { return &OutputCache::get(); }

// A tensor of the given geometry on a resizable storage from the cache (the
// at::detail::empty_*_generic helpers make non-resizable storages, and
// resize_ on an output should work as on any torch tensor).
at::Tensor empty_with_strides(at::IntArrayRef sizes, at::IntArrayRef strides,
                              c10::ScalarType dtype) {
  const caffe2::TypeMeta meta = c10::scalarTypeToTypeMeta(dtype);
  const size_t nbytes = at::detail::computeStorageNbytes(sizes, strides, meta.itemsize());
  c10::Allocator* allocator = output_allocator();
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, allocator->allocate(nbytes),
                       allocator, /*resizable=*/true);
  return at::empty({0}, at::TensorOptions().dtype(dtype)).set_(storage, 0, sizes, strides);
}

at::Tensor empty_output_like(const at::Tensor& x) {
  if (x.is_non_overlapping_and_dense()) return empty_with_strides(x.sizes(), x.strides(), x.scalar_type());
  return empty_output(x.sizes(), x.scalar_type());
}

at::Tensor empty_output(at::IntArrayRef sizes, c10::ScalarType dtype) {
  return empty_with_strides(sizes, c10::contiguous_strides(sizes), dtype);
}

namespace {

// A number with an optional K, M or G suffix, as sysfs writes cache sizes
// ("32768K"); 0 if the file cannot be read.
int64_t read_sysfs_size(const std::string& path) {
  int64_t size = 0;
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    long long value = 0;
    char unit = 'B';
    if (std::fscanf(f, "%lld%c", &value, &unit) >= 1 && value > 0) {
      const int shift = unit == 'K' ? 10 : unit == 'M' ? 20 : unit == 'G' ? 30 : 0;
      size = static_cast<int64_t>(value) << shift;
    }
    std::fclose(f);
  }
  return size;
}

}  // namespace

// The highest-level cache of CPU 0 in sysfs (its L3 where there is one).
// Not sysconf: glibc's _SC_LEVEL3_CACHE_SIZE adds up every L3 of the package
// (320 MB on the development VM's EPYC), while one core reaches only its own
// CCD's 32 MB.
int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t level = 0, size = 0;
    for (int i = 0; i < 16; ++i) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
      const int64_t l = read_sysfs_size(dir + "level");
      if (l == 0) break;
      const int64_t s = read_sysfs_size(dir + "size");
      if (l >= level && s > 0) {
        level = l;
        size = s;
      }
    }
    return size > 0 ? size : int64_t{32} << 20;
  }();
  return bytes;
}

}  // namespace fastopt::cpu
