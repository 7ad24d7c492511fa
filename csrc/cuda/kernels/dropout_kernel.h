// Launch API of the CUDA dropout kernels. Plain C++ with no torch types, so
// that the torch layer (csrc/cuda/dropout_cuda.cpp, built by the host
// compiler) and the kernels (dropout_kernel.cu, built by nvcc) share it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// out[i] = (x[i] + bias[i % bias_numel]) * keep(i / group) / keep_prob + residual[i]
// over `numel` elements of contiguous device arrays, bias and residual terms
// present only when set. keep(j) follows the CUDA layout of NOTE: [dropout
// stream] in common/philox.h, with the key and offset read from `seed` on the device.
struct DropoutLaunch {
  DType dtype;
  const void* x;
  const void* bias;      // nullable
  const void* residual;  // nullable
  void* out;             // may equal x
  // The 1-bit mask mode (group == 1 only), arrays of 8 bytes per 64 elements:
  // bits_out receives keep(i) as bit i % 8 of byte i / 8; bits_in, when set,
  // is applied instead of a draw (seed is then not read and may be null).
  uint8_t* bits_out;       // nullable
  const uint8_t* bits_in;  // nullable
  int64_t numel;
  int64_t group;       // >= 1, divides numel
  int64_t bias_numel;  // 0 without bias
  // Device pointer to two int64 words (Philox key, counter offset). Read by
  // the kernel, so a CUDA graph replays with the words of each replay.
  const int64_t* seed;
  uint32_t threshold;  // keep iff the element's word >= threshold
  bool drop_all;       // p == 1
  double keep_prob;    // 1 - p; 1 when drop_all
};

// Enqueues the kernel on `stream`. Only enqueues (no synchronisation, no
// reads of device memory on the host), so it can be captured in a CUDA graph.
// Launch errors are left to the caller's cudaGetLastError.
void launch_dropout(const DropoutLaunch& launch, cudaStream_t stream);

}  // namespace fastopt::cuda
