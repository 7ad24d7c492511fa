// Interface between the Adam op (csrc/cpu/adam.cpp) and its per-ISA kernels.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/adam_math.h"
#include "cpu/isa.h"
#include "cpu/kernels/update_norms.h"

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

// One contiguous run of elements of one parameter and its state.
struct AdamChunk {
  void* param;
  void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;  // null unless amsgrad
  int64_t numel;
  UpdateNorms* norms;  // null unless update ratios are tracked
};

// Scalars are passed in double and rounded once to the arithmetic type.
using AdamKernelFn = void (*)(const AdamKernelConfig&, const AdamScalars<double>&,
                              const AdamChunk&);

FASTOPT_DECLARE_ISA_KERNEL(AdamKernelFn, adam_kernel);

}  // namespace fastopt::cpu
