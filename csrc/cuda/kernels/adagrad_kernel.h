// Launch API of the CUDA Adagrad kernels. Plain C++ with no torch types, so
// that the torch layer (csrc/cuda/adagrad_cuda.cpp, built by the host
// compiler) and the kernels (adagrad_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/kernels/optimizer_launch.h"

namespace fastopt::cuda {

// One fused Adagrad step: the shared tensors and scalars in `common` (see
// OptimizerLaunch), the state sums and the hyperparameters. A hyperparameter
// table has the columns (lr, lr_decay, weight_decay, eps).
struct AdagradLaunch {
  OptimizerLaunch common;
  void* const* state_sums;
  double lr_decay;
  double weight_decay;
  double eps;
  bool maximize;
};

// Enqueues the step on `stream`, with the semantics of
// torch.optim.Adagrad(fused=True): each step counter is incremented, then
// every element is updated with the tensor's new step. Only enqueues kernels,
// so it can be captured in a CUDA graph. Launch errors are left to the
// caller's cudaGetLastError.
void launch_adagrad(const AdagradLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
