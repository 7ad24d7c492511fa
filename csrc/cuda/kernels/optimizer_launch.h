// What every CUDA optimizer launch shares. Plain C++ with no torch types, so
// that the torch layer (csrc/cuda/optimizer_cuda.h fills it) and the kernels
// (cuda/kernels/optimizer_functor.cuh reads it) share it.
#pragma once

#include <cstdint>

#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// The tensors and scalars of one fused optimizer step over `num_tensors`
// tensors, apart from the optimizer's own state lists and hyperparameters
// (AdamLaunch etc. hold those next to an OptimizerLaunch).
//
// The pointer arrays are host arrays with one entry per tensor, and each entry
// is a device pointer to a flat, dense tensor whose element order matches the
// other lists' at that index. The launcher copies the arrays into kernel
// arguments, so they may be freed once the launch function returns. Every
// float scalar pointer is a device pointer to one float32.
struct OptimizerLaunch {
  int64_t num_tensors;
  void* const* params;  // the float32 masters with param_copies
  void* const* grads;
  // Master weights (NOTE: [master weights]): the 16-bit parameters that
  // receive each updated master, rounded, in the same pass; null otherwise.
  void* const* param_copies;
  float* const* steps;  // step counters, incremented by the launch; null for SGD
  const int64_t* numels;
  DType dtype;       // of params and state
  DType grad_dtype;  // of grads and param_copies: dtype, or the 16-bit dtype with copies
  double lr;
  const float* lr_ptr;  // Tensor lr; when set, `lr` is ignored
  // Device pointer to a float64 [num_tensors, columns] table whose row i
  // replaces tensor i's scalar hyperparameters, column 0 being lr (NOTE:
  // [hyperparameter table]); null to use the scalars for every tensor.
  const double* hparams;
  // Device pointer to the two int64 words of NOTE: [rounding stream]: bfloat16
  // stores of the parameter (or of its copy) then round stochastically; null
  // rounds to nearest.
  const int64_t* rounding_seed;
  // Nullable; grads are divided by it and written back unscaled. float64, so
  // that a clip factor (folded in here) reaches float64 grads unrounded.
  const double* grad_scale;
  const float* found_inf;   // nullable; when *found_inf != 0 the launch changes nothing
  // Nullable device pointer to a float64 [num_tensors, 2] array that the
  // caller has zeroed on the stream. When set, row i receives
  // [sum (p_new - p_old)^2, sum p_old^2] of params[i]; rows stay zero for
  // empty tensors and when found_inf skips the step.
  double* update_norms;
};

}  // namespace fastopt::cuda
