// Launch API of the CUDA Adagrad kernels. Plain C++ with no torch types, so
// that the torch layer (csrc/cuda/adagrad_cuda.cpp, built by the host
// compiler) and the kernels (adagrad_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// One fused Adagrad step over `num_tensors` tensors. Pointer arrays and
// scalar pointers are as in AdamLaunch (cuda/kernels/adam_kernel.h).
struct AdagradLaunch {
  int64_t num_tensors;
  void* const* params;
  void* const* grads;
  void* const* state_sums;
  float* const* steps;  // step counters, incremented by the launch
  const int64_t* numels;
  DType dtype;
  double lr;
  const float* lr_ptr;  // Tensor lr; when set, `lr` is ignored
  double lr_decay;
  double weight_decay;
  double eps;
  bool maximize;
  const float* grad_scale;  // nullable; grads are divided by it and written back unscaled
  const float* found_inf;   // nullable; when *found_inf != 0 the launch changes nothing
  double* update_norms;     // nullable; as AdamLaunch::update_norms
};

// Enqueues the step on `stream`, with the semantics of
// torch.optim.Adagrad(fused=True): each step counter is incremented, then
// every element is updated with the tensor's new step. Only enqueues kernels,
// so it can be captured in a CUDA graph. Launch errors are left to the
// caller's cudaGetLastError.
void launch_adagrad(const AdagradLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
