// Interface between the BatchNorm ops (csrc/cpu/batch_norm.cpp) and their
// per-ISA kernels. x is viewed per channel, in one of two native layouts:
//
//   channels_last = false: [N, C, S], each (n, c) plane a contiguous run of S;
//   channels_last = true:  [R, C] rows (R = N * S), each row C channels.
//
// Two kernels cover every BatchNorm pass, forward and backward:
//   * a per-channel reduction of two sums, used for the statistics and for
//     the backward's sums of dy and dy * (x - mean);
//   * a per-channel affine map of x (and dy), used for y and for dx.
// The op layer cuts the work into ranges and runs them under at::parallel_for.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"

namespace fastopt::cpu {

struct BatchNormConfig {
  c10::ScalarType dtype;  // of x, dy and out
  int64_t N;
  int64_t C;
  int64_t S;
  bool channels_last;
};

// What the reduction sums, with c the channel of element x and k_c = center[c]:
//   Moments:  sum1 = sum (x - k_c),  sum2 = sum (x - k_c)^2
//             (k_c is a value of the channel, so the shifted sums do not cancel);
//   Gradient: sum1 = sum dy,         sum2 = sum dy * (x - k_c)   (k_c the mean).
enum class BatchNormSums : int { Moments = 0, Gradient = 1 };

// Arithmetic-type pointers (float for float, bfloat16 and float16; double for
// double) except x and dy, which have the config's dtype, and the sums, which
// are always double: partial sums of a few rows are formed in the arithmetic
// type and added into double, so long channels lose no precision.
struct BatchNormReduceArgs {
  BatchNormSums sums;
  const void* x;
  const void* dy;      // Gradient only
  const void* center;  // [C]
  double* sum1;        // [C]
  double* sum2;        // [C]
  void* scratch;       // channels last only: 2 * C arithmetic-type values
};

// Channels first: for each channel c in [begin, end), writes sum1[c], sum2[c]
//   over all N planes of the channel (in sample order, whatever the range).
// Channels last: adds the sums over rows [begin, end) into sum1[0..C) and
//   sum2[0..C).
using BatchNormReduceFn = void (*)(const BatchNormConfig&, const BatchNormReduceArgs&,
                                   int64_t begin, int64_t end);

// out = (x - center_c) * p_c + dy * q_c + r_c, the dy term only when dy is set.
// y = (x - mean) * invstd * weight + bias and
// dx = (x - mean) * p + dy * invstd * weight + r are both of this form.
struct BatchNormAffineArgs {
  const void* x;
  const void* dy;  // nullable
  void* out;
  const void* center;  // [C], arithmetic type
  const void* p;
  const void* q;  // read only with dy
  const void* r;
  // Write float32/float64 output around the caches (non-temporal stores):
  // for outputs much larger than the caches, which would otherwise read each
  // output line from memory before overwriting it.
  bool stream;
};

// Channels first: planes [begin, end) in memory order (plane j is sample
//   j / C, channel j % C). Channels last: rows [begin, end).
using BatchNormAffineFn = void (*)(const BatchNormConfig&, const BatchNormAffineArgs&,
                                   int64_t begin, int64_t end);

FASTOPT_DECLARE_ISA_KERNEL(BatchNormReduceFn, batch_norm_reduce_kernel);
FASTOPT_DECLARE_ISA_KERNEL(BatchNormAffineFn, batch_norm_affine_kernel);

}  // namespace fastopt::cpu
