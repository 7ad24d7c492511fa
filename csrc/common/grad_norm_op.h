// fastopt::grad_norm: the global p-norm of a list of gradients, and whether
// any of their elements is inf or NaN, in one multi-tensor reduction. Shared
// declarations of the CPU implementation and the thin CUDA layer.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastopt {

// Checks the op's input: dense (strided) floating-point tensors, all on one
// device of type `device`; dtypes may differ between tensors. Raises c10
// errors that name the op and the offending index.
void check_grad_norm_args(at::TensorList grads, double norm_type, c10::DeviceType device);

// The dtype of the returned norm: float64 when any gradient is float64, float32
// otherwise (16-bit gradients are reduced in float32, as their opmath type).
c10::ScalarType grad_norm_dtype(at::TensorList grads);

// A view of `t` the kernels can walk as one flat array: `t` itself when it is
// non-overlapping and dense (the norm does not depend on element order),
// otherwise a contiguous copy.
at::Tensor flat_for_norm(const at::Tensor& t);

}  // namespace fastopt
