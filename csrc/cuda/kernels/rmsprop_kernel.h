// Launch API of the CUDA RMSprop kernels. Plain C++ with no torch types, so
// that the torch layer (csrc/cuda/rmsprop_cuda.cpp, built by the host
// compiler) and the kernels (rmsprop_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/kernels/optimizer_launch.h"

namespace fastopt::cuda {

// One fused RMSprop step: the shared tensors and scalars in `common` (see
// OptimizerLaunch), RMSprop's state lists and hyperparameters. A
// hyperparameter table has the columns (lr, alpha, eps, weight_decay,
// momentum); momentum > 0 must then agree with `momentum`'s, which picks
// the state lists.
struct RMSpropLaunch {
  OptimizerLaunch common;
  void* const* square_avgs;
  void* const* grad_avgs;         // null unless centered
  void* const* momentum_buffers;  // null unless momentum > 0
  double alpha;
  double eps;
  double weight_decay;
  double momentum;
  bool centered;
  bool maximize;
};

// Enqueues the step on `stream` with torch.optim.RMSprop's semantics: each
// step counter is incremented, then every element is updated. Only enqueues
// kernels (no synchronisation), so it can be captured in a CUDA graph.
// Launch errors are left to the caller's cudaGetLastError.
void launch_rmsprop(const RMSpropLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
