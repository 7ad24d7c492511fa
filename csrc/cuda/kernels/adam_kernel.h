// Launch API of the CUDA Adam/AdamW kernels. Plain C++ with no torch types, so
// that the torch layer (csrc/cuda/adam_cuda.cpp, built by the host compiler)
// and the kernels (adam_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/kernels/optimizer_launch.h"

namespace fastopt::cuda {

// One fused Adam/AdamW step: the shared tensors and scalars in `common` (see
// OptimizerLaunch), Adam's state lists (host arrays of device pointers, one
// per tensor) and hyperparameters. A hyperparameter table has the columns
// (lr, beta1, beta2, weight_decay, eps).
struct AdamLaunch {
  OptimizerLaunch common;
  void* const* exp_avgs;
  void* const* exp_avg_sqs;
  void* const* max_exp_avg_sqs;  // null unless amsgrad
  double beta1;
  double beta2;
  double weight_decay;
  double eps;
  bool amsgrad;
  bool maximize;
  bool adamw;  // decoupled weight decay
};

// Enqueues the step on `stream`, with the semantics of torch.optim.Adam(fused=True):
// each step counter is incremented, then every element is updated with the
// tensor's new step. Only enqueues kernels (no synchronisation, no reads of
// device memory on the host), so it can be captured in a CUDA graph. Launch
// errors are left to the caller's cudaGetLastError.
void launch_adam(const AdamLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
