// The torch layer's mapping from a tensor dtype to a kernel's DType.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// Raises TypeError (naming `op`) for dtypes the kernels do not support.
inline DType kernel_dtype(const char* op, c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat:
      return DType::Float32;
    case c10::kDouble:
      return DType::Float64;
    case c10::kHalf:
      return DType::Float16;
    case c10::kBFloat16:
      return DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, op, ": supports float32, float64, bfloat16 and float16 tensors, got ",
                       dtype);
  }
}

}  // namespace fastopt::cuda
