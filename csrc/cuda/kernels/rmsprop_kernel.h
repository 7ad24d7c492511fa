// Launch API of the CUDA RMSprop kernels. Plain C++ with no torch types, so
// that the torch layer (csrc/cuda/rmsprop_cuda.cpp, built by the host
// compiler) and the kernels (rmsprop_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// One fused RMSprop step over `num_tensors` tensors.
//
// As for AdamLaunch: the pointer arrays are host arrays with one device
// pointer per tensor, to flat dense tensors whose element order matches the
// other lists' at that index, and may be freed once launch_rmsprop returns.
// Every scalar pointer is a device pointer to one float32.
struct RMSpropLaunch {
  int64_t num_tensors;
  void* const* params;
  void* const* grads;
  void* const* square_avgs;
  void* const* grad_avgs;         // null unless centered
  void* const* momentum_buffers;  // null unless momentum > 0
  float* const* steps;            // step counters, incremented by the launch
  const int64_t* numels;
  DType dtype;
  double lr;
  const float* lr_ptr;  // Tensor lr; when set, `lr` is ignored
  double alpha;
  double eps;
  double weight_decay;
  double momentum;
  bool centered;
  bool maximize;
  const float* grad_scale;  // nullable; grads are divided by it and written back unscaled
  const float* found_inf;   // nullable; when *found_inf != 0 the launch changes nothing
  // Nullable, as AdamLaunch::update_norms: a float64 [num_tensors, 2] array,
  // zeroed by the caller on `stream`, that receives per tensor
  // [sum (p_new - p_old)^2, sum p_old^2].
  double* update_norms;
};

// Enqueues the step on `stream` with torch.optim.RMSprop's semantics: each
// step counter is incremented, then every element is updated. Only enqueues
// kernels (no synchronisation), so it can be captured in a CUDA graph.
// Launch errors are left to the caller's cudaGetLastError.
void launch_rmsprop(const RMSpropLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
