// Interface between the SGD op (csrc/cpu/sgd.cpp) and its per-ISA kernels.
#pragma once

#include <c10/core/ScalarType.h>

#include "common/sgd_math.h"
#include "cpu/isa.h"
#include "cpu/kernels/kernel_chunk.h"

namespace fastopt::cpu {

// What stays fixed for one op call.
struct SgdKernelConfig {
  c10::ScalarType dtype;
  bool momentum;  // momentum != 0: the chunk has a momentum buffer
  SgdOptions options;
  bool unscale_grad;  // divide by grad_scale, as torch does, and store the result
  double grad_scale;
};

// A run of param, grad and momentum_buffer (null when momentum == 0).
using SgdChunk = KernelChunk<3>;

using SgdKernelFn = void (*)(const SgdKernelConfig&, const SgdCoeffs<double>&, const SgdChunk&);

FASTOPT_DECLARE_ISA_KERNEL(SgdKernelFn, sgd_kernel);

}  // namespace fastopt::cpu
