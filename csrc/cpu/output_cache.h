// A caching allocator for the large outputs of fastopt's CPU ops.
//
// Why: a fresh multi-megabyte CPU tensor comes from mmap, and its first write
// page-faults once per 4 KB page, the kernel zeroing each page on the way.
// On the 2-core development VM that costs about 0.7 ms of CPU time per MB,
// several times the cost of the bandwidth-bound pass that fills it: writing
// dropout's 64 MB output took 53 ms of CPU time into a fresh tensor and 13 ms
// in place. Training allocates the same activation sizes every step, so
// keeping freed blocks for reuse (as CUDA's caching allocator does for device
// memory) removes those faults after the first step.
//
// Blocks of at least kMinBytes are rounded up to whole 2 MB huge pages,
// 2 MB-aligned and advised for transparent huge pages; smaller requests go to
// torch's CPU allocator. A freed block is kept while the cache stays under its
// limit (FASTOPT_CPU_CACHE_MB, default 1024; 0 disables caching), and
// empty() returns every cached block to the system.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>

namespace fastopt::cpu {

struct OutputCacheStats {
  size_t cached_bytes;  // freed blocks held for reuse
  size_t limit_bytes;
  int64_t hits;         // allocations served from the cache
  int64_t misses;       // cacheable allocations that needed a new block
};

// Sets the most bytes the cache may hold (0: cache nothing) and trims to it.
void set_output_cache_limit(size_t bytes);
// Frees every cached block.
void empty_output_cache();
OutputCacheStats output_cache_stats();

// The allocator itself, for tensors built with at::detail::empty_*_generic.
c10::Allocator* output_allocator();

// An uninitialised output shaped like x: x's strides when x is dense (so a
// channels-last input gets a channels-last output), contiguous otherwise.
at::Tensor empty_output_like(const at::Tensor& x);
// An uninitialised contiguous output.
at::Tensor empty_output(at::IntArrayRef sizes, c10::ScalarType dtype);

// The tensors of an output's size that stay in use around a pass: what
// decides whether its output can still be in cache when the next op reads it.
enum class LiveSet : int64_t {
  // Evaluation: x and y only.
  kInference = 2,
  // Training: x is saved for the backward, which reads dy and writes dx.
  kTraining = 4,
};

// Bytes of the L3 cache one core shares (32 MB where the system does not
// say), read once.
int64_t last_level_cache_bytes();

// Whether an elementwise pass should write `out` with non-temporal stores:
// when the live set does not fit in the last-level cache, so that `out`
// would be evicted before the next layer reads it, and ordinary stores
// would first read every line of it from memory. Measured on the 2-core
// development VM (32 MB L3), each pairing A/B in alternating processes:
// - BatchNorm evaluation at (32, 64, 56, 56) float32 (live set 51 MB):
//   parity with torch streamed, 0.8x not streamed, on one thread;
// - at (64, 256, 14, 14) (live set 26 MB): 0.26 ms not streamed against
//   0.45 ms streamed, 2 threads;
// - the training passes there (live set 51 MB): BatchNorm, GroupNorm and
//   LayerNorm forward+backward 10-15% faster streamed, and dropout's forward
//   17% faster.
inline bool stream_output(const at::Tensor& out, LiveSet live) {
  const int64_t bytes = out.numel() * static_cast<int64_t>(out.element_size());
  return bytes * static_cast<int64_t>(live) > last_level_cache_bytes();
}

}  // namespace fastopt::cpu
