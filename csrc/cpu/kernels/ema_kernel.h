// Interface between the EMA op (csrc/cpu/ema.cpp) and its per-ISA kernels.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"

namespace fastopt::cpu {

// One contiguous run of elements of a shadow tensor and its parameter.
struct EmaChunk {
  void* shadow;
  const void* param;
  int64_t numel;
};

// shadow = lerp(shadow, param, weight) over one chunk; `weight` (1 - decay)
// is passed in double and rounded once to the arithmetic type.
using EmaKernelFn = void (*)(c10::ScalarType dtype, double weight, const EmaChunk&);

FASTOPT_DECLARE_ISA_KERNEL(EmaKernelFn, ema_kernel);

}  // namespace fastopt::cpu
