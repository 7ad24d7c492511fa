// Launch API of the CUDA GroupNorm kernels (GroupNorm, LayerNorm and
// InstanceNorm through it). Plain C++ with no torch types, shared by the
// torch layer (csrc/cuda/group_norm_cuda.cpp, host compiler) and the kernels
// (group_norm_kernel.cu, nvcc).
//
// x is N samples of C channels times S positions, in G groups of D = C / G
// consecutive channels, in one of two layouts:
//   channels_last = false: [N, C, S], each (n, c) plane a contiguous run;
//   channels_last = true:  [N, S, C], each position a contiguous row of C.
// LayerNorm over K trailing elements is G = 1, C = K, S = 1; InstanceNorm is
// G = C. The outputs and every [C] or [N, G] array are as on the CPU
// (csrc/cpu/kernels/group_norm_kernel.h): y = act(z), z = (x - mean) * rstd
// * gamma + beta, with the statistics and parameters in the arithmetic type.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/norm_activation.h"
#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

struct GroupNormShape {
  DType dtype;  // of x, y, dy and dx
  int64_t N;
  int64_t C;
  int64_t S;
  int64_t G;
  bool channels_last;
  NormActivation activation;
};

// Pointers other than x, y, dy and dx are in the arithmetic type (float for
// float32, float16 and bfloat16; double for float64). gamma and beta are [C]
// and nullable (1 and 0); mean and rstd are [N, G].
struct GroupNormFwdLaunch {
  GroupNormShape shape;
  double eps;
  const void* x;
  const void* gamma;
  const void* beta;
  void* y;
  void* mean;
  void* rstd;
  void* workspace;  // group_norm_fwd_workspace(shape) bytes, 16-byte aligned
};

// dx, and dgamma = sum rstd * dz * (x - mean), dbeta = sum dz over N and S,
// where dz = act'(z) * dy. beta is read only to recompute z for an activation.
struct GroupNormBwdLaunch {
  GroupNormShape shape;
  const void* dy;
  const void* x;
  const void* mean;
  const void* rstd;
  const void* gamma;
  const void* beta;
  void* dx;
  void* dgamma;  // [C], arithmetic type
  void* dbeta;   // [C], arithmetic type
  void* workspace;  // group_norm_bwd_workspace(shape) bytes, 16-byte aligned
};

// Bytes of scratch each pass needs (per-block partial results).
int64_t group_norm_fwd_workspace(const GroupNormShape& shape);
int64_t group_norm_bwd_workspace(const GroupNormShape& shape);

// Each only enqueues work on `stream`; launch errors are left to the
// caller's cudaGetLastError. Results are the same bits run to run: every sum
// is combined in an order fixed by the shape alone.
void launch_group_norm_fwd(const GroupNormFwdLaunch& launch, cudaStream_t stream);
void launch_group_norm_bwd(const GroupNormBwdLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
