// Interface between the dropout ops (csrc/cpu/dropout.cpp) and their per-ISA
// kernels. One kernel serves dropout, channel-wise dropout and dropout_add:
//
//   out[i] = (x[i] + bias[i % bias_numel]) * keep(i / group) / (1 - p) + residual[i]
//
// with the bias and residual terms present only when their pointers are set;
// or, for channel-wise dropout of channels-last memory (N, group, channels),
//
//   out[i] = x[i] * keep((i / (group * channels)) * channels + i % channels) / (1 - p)
//
// Backward is the same kernel applied to the incoming gradient.
//
// The 1-bit mask mode (element-wise dropout only) adds two optional streams:
// `bits_out` receives keep(i) as bit i % 8 of byte i / 8, and `bits_in`
// replaces the Philox draw with those stored bits. Both arrays hold
// dropout_mask_bytes (common/dropout_op.h); a chunk that starts on a Philox
// block boundary owns every byte it touches.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/philox.h"
#include "cpu/isa.h"

namespace fastopt::cpu {

// What stays fixed for one op call.
struct DropoutKernelConfig {
  c10::ScalarType dtype;
  DropoutKey key;
  uint32_t threshold;  // keep iff the element's word >= threshold
  bool drop_all;       // p == 1: keep nothing
  double keep_prob;    // 1 - p, the divisor of kept elements; 1 when drop_all
  int64_t group;       // elements sharing one mask index (channel-wise), >= 1
  int64_t channels;    // 0, or C of channels-last memory (see above; group > 1, no bias)
  int64_t bias_numel;  // 0 without bias
  bool stream;         // write out with non-temporal stores (out-of-place, large; float/double)
};

// Elements [begin, end) of contiguous tensors; every pointer is the tensor's
// element 0, so that i indexes all of them and the mask alike.
struct DropoutChunk {
  const void* x;
  const void* bias;      // nullable
  const void* residual;  // nullable
  void* out;             // may equal x
  uint8_t* bits_out;       // nullable; group == 1 only
  const uint8_t* bits_in;  // nullable; group == 1 only; replaces the draw
  int64_t begin;
  int64_t end;
};

using DropoutKernelFn = void (*)(const DropoutKernelConfig&, const DropoutChunk&);

FASTOPT_DECLARE_ISA_KERNEL(DropoutKernelFn, dropout_kernel);

}  // namespace fastopt::cpu
