// How the CPU norm ops cut their work into blocks for at::parallel_for.
//
// Blocks depend on the shape alone, never on the thread count, so per-block
// partial sums (weight gradients, channel sums) add up in the same order
// however many threads run the blocks. Small work is a single block, which
// at::parallel_for runs on the calling thread: waking the pool costs a few
// microseconds, more than normalizing a small tensor (LayerNorm over
// (32, 64) took 7.9 us here with every sample its own block, against 4 us
// for torch's, which runs it inline).
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastopt::cpu {

// At most this many blocks: enough to balance any thread count we meet.
constexpr int64_t kMaxBlocks = 64;
// At least this many values per block (torch's at::internal::GRAIN_SIZE).
constexpr int64_t kGrainElements = 32768;

// Blocks for `units` units of work (samples, rows, planes) that hold
// `elements` values in all: one per kGrainElements values, at least one, and
// at most min(units, kMaxBlocks).
inline int64_t work_blocks(int64_t units, int64_t elements) {
  return std::max<int64_t>(1, std::min({units, kMaxBlocks, elements / kGrainElements}));
}

// Units per parallel task when every unit (say, a channel) of `unit_elements`
// values is a task of its own: enough of them to make kGrainElements values.
inline int64_t unit_grain(int64_t unit_elements) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, unit_elements));
}

}  // namespace fastopt::cpu
