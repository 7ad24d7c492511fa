// Launch API of the CUDA SGD kernels. Plain C++ with no torch types, so that
// the torch layer (csrc/cuda/sgd_cuda.cpp, built by the host compiler) and the
// kernels (sgd_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// One fused SGD step over `num_tensors` tensors. Pointer arrays and scalar
// pointers are as in AdamLaunch (cuda/kernels/adam_kernel.h). SGD keeps no
// step counter.
struct SgdLaunch {
  int64_t num_tensors;
  void* const* params;
  void* const* grads;
  void* const* momentum_buffers;  // null when momentum == 0
  const int64_t* numels;
  DType dtype;
  double lr;
  const float* lr_ptr;  // Tensor lr; when set, `lr` is ignored
  double momentum;
  double dampening;
  double weight_decay;
  bool nesterov;
  bool maximize;
  bool is_first_step;       // every momentum buffer is new: it is set to the gradient
  const float* grad_scale;  // nullable; grads are divided by it and written back unscaled
  const float* found_inf;   // nullable; when *found_inf != 0 the launch changes nothing
  double* update_norms;     // nullable; as AdamLaunch::update_norms
};

// Enqueues the step on `stream`, with the semantics of torch.optim.SGD.
// Only enqueues a kernel, so it can be captured in a CUDA graph. Launch
// errors are left to the caller's cudaGetLastError.
void launch_sgd(const SgdLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
