// Launch API of the CUDA EMA (parameter averaging) kernel. Plain C++ with no
// torch types, shared by csrc/cuda/ema_cuda.cpp and ema_kernel.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// shadow[i] = lerp(shadow[i], params[i], 1 - decay) for `num_tensors`
// tensors. Host arrays of device pointers to flat dense tensors, as for
// AdamLaunch; they may be freed once launch_ema returns.
struct EmaLaunch {
  int64_t num_tensors;
  void* const* shadow;
  const void* const* params;
  const int64_t* numels;
  DType dtype;
  double decay;
};

// Enqueues the update on `stream`; only enqueues kernels, so it can be
// captured in a CUDA graph. Launch errors are left to cudaGetLastError.
void launch_ema(const EmaLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
