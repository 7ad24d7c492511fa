// Which values shift a channel's moment sums. Torch-free: shared by the
// BatchNorm ops (a CPU loop, a CUDA kernel: cuda/kernels/batch_norm_kernel.cu) and the
// GroupNorm kernels (CPU and CUDA).
#pragma once

#include "macros.h"

#include <algorithm>
#include <cstdint>
#include <utility>

namespace fastopt::norm {

// NOTE: [moment shift]
// The statistics are sums of (x - k) and (x - k)^2, shifted by a per-channel
// k so that a mean large against the spread does not cancel. They still lose
// about log2(1 + (k - mean)^2 / var) bits, so k must be close to the mean. k
// is the mean of the channel's first kShiftValues values, the first
// positions of the first samples (a single value, the first, is often two
// standard deviations away: float32 running_var was 3.7e-6 off where torch's
// was 3.7e-7, AVX2 build at (3, 20, 5, 6); the mean of 16 values is about a
// quarter of one away, under a tenth of a bit).
constexpr int64_t kShiftValues = 16;

// A shift must be finite: an inf among the values it averages would make it
// inf, and every shifted value inf - inf = NaN, so that the channel's mean
// came out NaN where torch's is the inf (and its variance NaN in both). A
// non-finite shift is replaced by 0, which leaves the sums, and so the
// mean, to the values themselves. (k - k is 0 exactly for finite k.)
template <typename T>
FASTOPT_HOST_DEVICE inline T finite_shift(T k) {
  return k - k == T(0) ? k : T(0);
}

// The samples and positions per sample whose values make up the shift, for
// N samples of S positions.
inline std::pair<int64_t, int64_t> shift_extent(int64_t N, int64_t S) {
  const int64_t positions = std::min(S, kShiftValues);
  return {std::min(N, (kShiftValues + positions - 1) / positions), positions};
}

}  // namespace fastopt::norm
