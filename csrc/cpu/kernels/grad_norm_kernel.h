// Interface between the grad_norm op (csrc/cpu/grad_norm.cpp) and its per-ISA
// kernels: the partial reduction of one run of gradient elements.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/norm_kind.h"
#include "cpu/isa.h"

namespace fastopt::cpu {


// A run's contribution. `value` is the sum (or max, min) of the run; `check`
// sums x - x over the run, which is 0 for finite x and NaN otherwise, so it
// tells non-finite gradients apart from a norm that merely overflowed.
struct NormPartial {
  double value;
  double check;
};

using GradNormKernelFn = void (*)(c10::ScalarType dtype, NormKind kind, double p,
                                  const void* data, int64_t n, NormPartial* out);

FASTOPT_DECLARE_ISA_KERNEL(GradNormKernelFn, grad_norm_kernel);

}  // namespace fastopt::cpu
