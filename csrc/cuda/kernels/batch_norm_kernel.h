// Launch API of the CUDA BatchNorm kernels. Plain C++ with no torch types,
// shared by the torch layer (csrc/cuda/batch_norm_cuda.cpp, host compiler)
// and the kernels (batch_norm_kernel.cu, nvcc).
//
// x is viewed per channel in one of two layouts, as on the CPU:
//   channels_last = false: [N, C, S], each (n, c) plane a contiguous run;
//   channels_last = true:  [R, C] rows, R = N * S.
// Every op is a short chain of these launches:
//   * shift: the per-channel shift of the moment sums;
//   * reduce: per-channel partial sums (statistics, or the backward's sums of
//     dy and dy * (x - mean)) into a workspace;
//   * moments / gradient: one thread per channel adds the partials and does
//     the per-channel arithmetic (statistics, coefficients, weight grads);
//   * affine: the per-channel affine map of x (and dy), for y and for dx.
//
// NOTE: [per-channel arithmetic in kernels]
// The [C]-sized arithmetic between the passes was once a chain of torch ops
// in double: about twenty launches per op, each a few microseconds of host
// time, against passes of ten to forty microseconds over a ResNet activation
// on an H100. There BatchNorm training ran at 0.34-0.39x torch and its time
// hardly changed with the input size (H100 report of 2026-11-24). Each op is
// now at most four launches; the arithmetic, in double, is the same.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

struct BatchNormShape {
  DType dtype;  // of x, dy and out; [C] arrays are in the arithmetic type
  int64_t N;
  int64_t C;
  int64_t S;
  bool channels_last;
};

// shift[c] = the mean, summed in double in (sample, position) order, of
// channel c's values at samples [0, samples) and positions [0, positions):
// NOTE: [moment shift] (common/moment_shift.h) gives the extent.
struct BatchNormShiftLaunch {
  BatchNormShape shape;
  const void* x;
  void* shift;  // [C], arithmetic type
  int64_t samples;
  int64_t positions;
};

// With k_c = center[c]:
//   gradient = false: partial sums of (x - k_c) and (x - k_c)^2
//                     (k_c one of the channel's values, so nothing cancels);
//   gradient = true:  partial sums of dy and dy * (x - k_c)   (k_c the mean).
// Partial sums of a few values are formed in the arithmetic type, then
// combined in double in a fixed order, so results do not depend on timing.
// The workspace holds them as [partials][2][C]; the moments and gradient
// launches add them up.
struct BatchNormReduceLaunch {
  BatchNormShape shape;
  bool gradient;
  const void* x;
  const void* dy;      // gradient only
  const void* center;  // [C], arithmetic type
  double* workspace;   // batch_norm_reduce_workspace(shape) doubles
};

// Number of doubles of workspace that launch_batch_norm_reduce needs.
int64_t batch_norm_reduce_workspace(const BatchNormShape& shape);

// The statistics from a moments reduction, per channel c, in double:
//   d = s1 / count, mean = shift + d, m2 = max(0, s2 - s1 * d),
//   var = m2 / count, invstd = 1 / sqrt(var + eps),
//   scale = invstd * weight (weight 1 when null),
// each output written, rounded to the arithmetic type, when not null.
// [C] arrays are in the arithmetic type; count > 0.
struct BatchNormMomentsLaunch {
  BatchNormShape shape;
  const double* workspace;  // of the reduction
  const void* shift;        // its center
  const void* weight;       // nullable
  int64_t count;
  double eps;
  void* mean;
  void* m2;
  void* var;
  void* invstd;
  void* scale;
};

// The backward's per-channel arithmetic, in double, from s1 = sum dy and
// s2 = sum dy * (x - mean), taken from a gradient reduction's workspace or,
// when workspace is null, from the arrays sum_dy and sum_dy_xmu:
//   sum_dy_out = s1, sum_dy_xmu_out = s2;
// and, with invstd set,
//   q = invstd * weight, p = -q * invstd^2 * s2 / count, r = -q * s1 / count,
//   so that dx = (x - mean) * p + dy * q + r (launch_batch_norm_affine);
//   grad_weight = s2 * invstd, grad_bias = s1, in grad_dtype.
// Outputs are written when not null; other [C] arrays are in the arithmetic
// type.
struct BatchNormGradientLaunch {
  BatchNormShape shape;
  const double* workspace;  // nullable
  const void* sum_dy;       // read when workspace is null
  const void* sum_dy_xmu;
  const void* invstd;  // nullable
  const void* weight;  // nullable
  int64_t count;       // > 0 with invstd
  void* p;
  void* q;
  void* r;
  void* sum_dy_out;
  void* sum_dy_xmu_out;
  DType grad_dtype;
  void* grad_weight;
  void* grad_bias;
};

// out = (x - center_c) * p_c + dy * q_c + r_c, the dy term only when dy is
// set and the r term only when r is.
struct BatchNormAffineLaunch {
  BatchNormShape shape;
  const void* x;
  const void* dy;  // nullable
  void* out;
  const void* center;  // [C], arithmetic type, like p, q and r
  const void* p;
  const void* q;  // read only with dy
  const void* r;  // nullable
};

// running = (1 - momentum) * running + momentum * scale * stat, in double and
// rounded once into the running buffer's dtype.
struct BatchNormRunningLaunch {
  DType running_dtype;
  void* running;     // [C], contiguous
  const void* stat;  // [C], float64 when stat_double, else float32
  bool stat_double;
  int64_t C;
  double momentum;
  double scale;
};

// Each only enqueues work on `stream`; launch errors are left to the
// caller's cudaGetLastError.
void launch_batch_norm_shift(const BatchNormShiftLaunch& launch, cudaStream_t stream);
void launch_batch_norm_reduce(const BatchNormReduceLaunch& launch, cudaStream_t stream);
void launch_batch_norm_moments(const BatchNormMomentsLaunch& launch, cudaStream_t stream);
void launch_batch_norm_gradient(const BatchNormGradientLaunch& launch, cudaStream_t stream);
void launch_batch_norm_affine(const BatchNormAffineLaunch& launch, cudaStream_t stream);
void launch_batch_norm_running(const BatchNormRunningLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
