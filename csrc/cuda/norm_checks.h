// Argument checks shared by the CUDA normalization ops
// (batch_norm_cuda.cpp, group_norm_cuda.cpp), on top of the device-neutral
// ones of common/norm_layout.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "common/norm_layout.h"
#include "cuda/kernel_dtype.h"

namespace fastopt::cuda {

// The kernel DType of x. An unsupported dtype raises NotImplementedError
// (norm::check_dtype), as the CPU ops do, not kernel_dtype's TypeError.
inline DType norm_kernel_dtype(const char* op, c10::ScalarType dtype) {
  norm::check_dtype(op, dtype);
  return kernel_dtype(op, dtype);
}

// The kernels dereference every pointer on x's device. The dispatcher sends a
// call here when any argument is a CUDA tensor, so a CPU one would reach a
// kernel and fault, which poisons the CUDA context: it must raise here.
inline void check_device(const char* op, const char* name, const at::Tensor& t,
                         const at::Tensor& x) {
  TORCH_CHECK(!t.defined() || t.device() == x.device(), op, ": expected ", name, " on ",
              x.device(), ", got ", t.device());
}

}  // namespace fastopt::cuda
