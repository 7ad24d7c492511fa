// Launch API of the CUDA Adam/AdamW kernels. Plain C++ with no torch types, so
// that the torch layer (csrc/cuda/adam_cuda.cpp, built by the host compiler)
// and the kernels (adam_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// One fused Adam/AdamW step over `num_tensors` tensors.
//
// The pointer arrays are host arrays with one entry per tensor, and each entry
// is a device pointer to a flat, dense tensor whose element order matches the
// other lists' at that index. The launcher copies the arrays into kernel
// arguments, so they may be freed once launch_adam returns. Every scalar
// pointer is a device pointer to one float32.
struct AdamLaunch {
  int64_t num_tensors;
  void* const* params;
  void* const* grads;
  void* const* exp_avgs;
  void* const* exp_avg_sqs;
  void* const* max_exp_avg_sqs;  // null unless amsgrad
  float* const* steps;           // step counters, incremented by the launch
  const int64_t* numels;
  DType dtype;
  double lr;
  const float* lr_ptr;  // Tensor lr; when set, `lr` is ignored
  double beta1;
  double beta2;
  double weight_decay;
  double eps;
  bool amsgrad;
  bool maximize;
  bool adamw;               // decoupled weight decay
  const float* grad_scale;  // nullable; grads are divided by it and written back unscaled
  const float* found_inf;   // nullable; when *found_inf != 0 the launch changes nothing
  // Nullable device pointer to a float64 [num_tensors, 2] array that the
  // caller has zeroed on `stream`. When set, row i receives
  // [sum (p_new - p_old)^2, sum p_old^2] of params[i]; rows stay zero for
  // empty tensors and when found_inf skips the step.
  double* update_norms;
};

// Enqueues the step on `stream`, with the semantics of torch.optim.Adam(fused=True):
// each step counter is incremented, then every element is updated with the
// tensor's new step. Only enqueues kernels (no synchronisation, no reads of
// device memory on the host), so it can be captured in a CUDA graph. Launch
// errors are left to the caller's cudaGetLastError.
void launch_adam(const AdamLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
