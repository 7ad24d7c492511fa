// Interface between the Adagrad op (csrc/cpu/adagrad.cpp) and its per-ISA kernels.
#pragma once

#include <c10/core/ScalarType.h>

#include "common/adagrad_math.h"
#include "cpu/isa.h"
#include "cpu/kernels/kernel_chunk.h"

namespace fastopt::cpu {

// What stays fixed for one op call.
struct AdagradKernelConfig {
  c10::ScalarType dtype;
  bool maximize;
  bool has_weight_decay;
  bool unscale_grad;  // divide by grad_scale, as torch does, and store the result
  double grad_scale;
};

// A run of param, grad and state_sum.
using AdagradChunk = KernelChunk<3>;

// The per-tensor scalars (its decayed lr) are passed in double and rounded
// once to the arithmetic type.
using AdagradKernelFn = void (*)(const AdagradKernelConfig&, const AdagradCoeffs<double>&,
                                 const AdagradChunk&);

FASTOPT_DECLARE_ISA_KERNEL(AdagradKernelFn, adagrad_kernel);

}  // namespace fastopt::cpu
