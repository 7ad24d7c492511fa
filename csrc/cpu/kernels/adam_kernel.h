// Interface between the Adam op (csrc/cpu/adam.cpp) and its per-ISA kernels.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/adam_math.h"
#include "cpu/isa.h"
#include "cpu/kernels/kernel_chunk.h"

namespace fastopt::cpu {

// What stays fixed for one op call.
struct AdamKernelConfig {
  c10::ScalarType dtype;
  bool adamw;
  bool maximize;
  bool has_weight_decay;
  bool amsgrad;
  // 1 / grad_scale is not used: torch divides by the scale, and so do we.
  bool unscale_grad;
  double grad_scale;
};

// A run of param, grad, exp_avg, exp_avg_sq and max_exp_avg_sq (null unless
// amsgrad), in the order of AdamList in adam_kernel.cpp.
using AdamChunk = KernelChunk<5>;

// Scalars are passed in double and rounded once to the arithmetic type.
using AdamKernelFn = void (*)(const AdamKernelConfig&, const AdamScalars<double>&,
                              const AdamChunk&);

FASTOPT_DECLARE_ISA_KERNEL(AdamKernelFn, adam_kernel);

}  // namespace fastopt::cpu
