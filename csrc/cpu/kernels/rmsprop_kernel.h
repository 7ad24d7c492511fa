// Interface between the RMSprop op (csrc/cpu/rmsprop.cpp) and its per-ISA kernels.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/rmsprop_math.h"
#include "cpu/isa.h"
#include "cpu/kernels/kernel_chunk.h"
#include "cpu/kernels/update_norms.h"

namespace fastopt::cpu {

// What stays fixed for one op call.
struct RMSpropKernelConfig {
  c10::ScalarType dtype;
  bool centered;
  bool has_momentum;
  bool maximize;
  bool has_weight_decay;
  bool unscale_grad;  // divide by grad_scale (as torch does), and store the unscaled grad
  double grad_scale;
  // The hyperparameters, as the user gave them. RMSprop's scalars do not
  // depend on the step, and each kernel rounds them to its arithmetic type
  // itself (make_rmsprop_scalars), as torch rounds Python scalars per op.
  double lr;
  double alpha;
  double eps;
  double weight_decay;
  double momentum;
};

// Lists, in op order: param, grad, square_avg, grad_avg (null unless
// centered), momentum_buffer (null without momentum).
using RMSpropChunk = KernelChunk<5>;

using RMSpropKernelFn = void (*)(const RMSpropKernelConfig&, const RMSpropChunk&);

FASTOPT_DECLARE_ISA_KERNEL(RMSpropKernelFn, rmsprop_kernel);

}  // namespace fastopt::cpu
