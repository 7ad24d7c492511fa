// Interface between the EMA op (csrc/cpu/ema.cpp) and its per-ISA kernels.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"
#include "cpu/kernels/kernel_chunk.h"

namespace fastopt::cpu {

// Lists: the shadow (written), then its parameter (only read).
using EmaChunk = KernelChunk<2>;

// shadow = lerp(shadow, param, weight) over one chunk; `weight` (1 - decay)
// is passed in double and rounded once to the arithmetic type.
using EmaKernelFn = void (*)(c10::ScalarType dtype, double weight, const EmaChunk&);

FASTOPT_DECLARE_ISA_KERNEL(EmaKernelFn, ema_kernel);

}  // namespace fastopt::cpu
