// Storage dtypes of the torch-free CUDA kernels. Plain C++, shared by every
// launch header and the torch layer that maps c10::ScalarType onto it.
#pragma once

namespace fastopt::cuda {

// Storage type of every tensor of one call. Arithmetic runs in float for
// Float32, Float16 and BFloat16, and in double for Float64.
enum class DType : int { Float32, Float64, Float16, BFloat16 };

}  // namespace fastopt::cuda
