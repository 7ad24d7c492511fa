// Storage types of the torch-free CUDA kernels, shared by every launch API.
#pragma once

namespace fastopt::cuda {

// Storage dtype of the tensors of one launch. Arithmetic runs in float for
// Float32, Float16 and BFloat16, and in double for Float64.
enum class DType : int { Float32, Float64, Float16, BFloat16 };

}  // namespace fastopt::cuda
