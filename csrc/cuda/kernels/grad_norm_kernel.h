// Launch API of the CUDA grad_norm kernels. Plain C++ with no torch types, so
// that the torch layer (csrc/cuda/grad_norm_cuda.cpp) and the kernels
// (grad_norm_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/norm_kind.h"
#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// The gradients of one dtype. The pointer arrays are host arrays with one
// device pointer per tensor (flat, dense); the launcher copies them into
// kernel arguments.
struct GradNormLaunch {
  int64_t num_tensors;
  void* const* grads;
  const int64_t* numels;
  DType dtype;
  NormKind kind;
  double p;
  // Device pointer to two doubles: the running reduction (initialised by
  // launch_grad_norm_init) and the non-finite flag.
  double* acc;
};

// Sets acc to the reduction's identity and the flag to 0. `empty`: the
// tensors hold no element at all (then the norm is 0 for every kind).
void launch_grad_norm_init(NormKind kind, bool empty, double* acc, cudaStream_t stream);

// Folds the elements of `launch`'s tensors into acc; call once per dtype.
void launch_grad_norm(const GradNormLaunch& launch, cudaStream_t stream);

// Writes the final norm (float32, or float64 when `norm_is_double`) and the
// float32 non-finite flag (1 when any element was inf or NaN) from acc.
void launch_grad_norm_finish(NormKind kind, double p, const double* acc, void* norm,
                             bool norm_is_double, float* nonfinite, cudaStream_t stream);

}  // namespace fastopt::cuda
