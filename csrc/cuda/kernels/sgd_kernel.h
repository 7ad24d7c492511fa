// Launch API of the CUDA SGD kernels. Plain C++ with no torch types, so that
// the torch layer (csrc/cuda/sgd_cuda.cpp, built by the host compiler) and the
// kernels (sgd_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/kernels/optimizer_launch.h"

namespace fastopt::cuda {

// One fused SGD step: the shared tensors and scalars in `common` (see
// OptimizerLaunch; SGD keeps no step counter, so common.steps is null), the
// momentum buffers and the hyperparameters. A hyperparameter table has the
// columns (lr, momentum, dampening, weight_decay).
struct SgdLaunch {
  OptimizerLaunch common;
  void* const* momentum_buffers;  // null when momentum == 0
  double momentum;
  double dampening;
  double weight_decay;
  bool nesterov;
  bool maximize;
  bool is_first_step;  // every momentum buffer is new: it is set to the gradient
};

// Enqueues the step on `stream`, with the semantics of torch.optim.SGD.
// Only enqueues a kernel, so it can be captured in a CUDA graph. Launch
// errors are left to the caller's cudaGetLastError.
void launch_sgd(const SgdLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
