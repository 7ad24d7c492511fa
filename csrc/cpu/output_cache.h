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

// Bytes of the last-level cache CPU 0 reports in sysfs (its L3 where there
// is one; 32 MB where the system does not say), read once.
int64_t last_level_cache_bytes();

// Whether an elementwise pass should write `out` with non-temporal stores:
// when four tensors of its size, what a training step keeps in use around
// a norm or dropout pass (x, y, dy, dx), do not fit in the L3 cache. Such
// an output would be evicted before its reader comes, and ordinary stores
// would first read each of its lines from memory. (8 MB on the development
// VM's 32 MB L3.) Measured there, A/B in alternating processes:
// - BatchNorm evaluation at (32, 64, 56, 56) float32: parity with torch
//   streamed, 0.8x not streamed, on one thread;
// - the training passes at (64, 256, 14, 14) (12.8 MB outputs): BatchNorm,
//   GroupNorm and LayerNorm forward+backward 10-15% faster streamed, and
//   dropout's forward 17% faster;
// - evaluation there depends on the cache: with x and the output block
//   still cached from the previous call, not streaming took 0.26-0.33 ms
//   against 0.45; with the caches scrubbed before each call (the benchmark's
//   rule, under which the targets are measured) it was about 20% slower
//   than streaming. So evaluation follows the same rule.
inline bool stream_output(const at::Tensor& out) {
  const int64_t bytes = out.numel() * static_cast<int64_t>(out.element_size());
  return 4 * bytes > last_level_cache_bytes();
}

}  // namespace fastopt::cpu
