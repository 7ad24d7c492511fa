// Host-side helpers for the scalar tensors an optimizer op reads on the CPU:
// step counters, tensor learning rates, AMP's grad_scale and found_inf.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastopt::cpu {

// The value of a one-element CPU tensor (any real dtype).
double read_scalar(const char* what, const at::Tensor& t);

// Adds one to a step counter and returns the new value. Rounds like torch's
// `step_t += 1` in the counter's own dtype (float32 by default).
double increment_step(const at::Tensor& step);

// The storage dtypes the optimizer kernels support.
void check_supported_dtype(const char* op, c10::ScalarType dtype);

}  // namespace fastopt::cpu
