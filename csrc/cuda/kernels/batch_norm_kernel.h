// Launch API of the CUDA BatchNorm kernels. Plain C++ with no torch types,
// shared by the torch layer (csrc/cuda/batch_norm_cuda.cpp, host compiler)
// and the kernels (batch_norm_kernel.cu, nvcc).
//
// x is viewed per channel in one of two layouts, as on the CPU:
//   channels_last = false: [N, C, S], each (n, c) plane a contiguous run;
//   channels_last = true:  [R, C] rows, R = N * S.
// Two kernels cover every pass: per-channel sums (statistics, and the
// backward's sums of dy and dy * (x - mean)) and a per-channel affine map
// (y, and dx). The per-channel arithmetic between them is left to the caller.
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

// With k_c = center[c]:
//   gradient = false: sums = [sum (x - k_c) | sum (x - k_c)^2]
//                     (k_c one of the channel's values, so nothing cancels);
//   gradient = true:  sums = [sum dy | sum dy * (x - k_c)]    (k_c the mean).
// Partial sums of a few values are formed in the arithmetic type, then
// combined in double in a fixed order, so results do not depend on timing.
struct BatchNormReduceLaunch {
  BatchNormShape shape;
  bool gradient;
  const void* x;
  const void* dy;      // gradient only
  const void* center;  // [C], arithmetic type
  double* workspace;   // batch_norm_reduce_workspace(shape) doubles
  double* sums;        // [2 * C]
};

// Number of doubles of workspace that launch_batch_norm_reduce needs.
int64_t batch_norm_reduce_workspace(const BatchNormShape& shape);

// out = (x - center_c) * p_c + dy * q_c + r_c, the dy term only when dy is set.
struct BatchNormAffineLaunch {
  BatchNormShape shape;
  const void* x;
  const void* dy;  // nullable
  void* out;
  const void* center;  // [C], arithmetic type, like p, q and r
  const void* p;
  const void* q;  // read only with dy
  const void* r;
};

// Each only enqueues work on `stream`; launch errors are left to the
// caller's cudaGetLastError.
void launch_batch_norm_reduce(const BatchNormReduceLaunch& launch, cudaStream_t stream);
void launch_batch_norm_affine(const BatchNormAffineLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
