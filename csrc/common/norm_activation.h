// The activation the GroupNorm family can fuse after its affine step, as the
// `activation` code of fastopt::group_norm_fwd/bwd. Torch-free: shared by the
// CPU kernels and the CUDA launch API.
#pragma once

namespace fastopt {

enum class NormActivation : int { None = 0, ReLU = 1, SiLU = 2 };

}  // namespace fastopt
