// Validation shared by the CPU and CUDA implementations of fastopt::ema_.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastopt {

// Shared validation of fastopt::ema_'s lists: one param per shadow tensor, all
// of one floating dtype and on one `device`-type device, matching shapes.
void check_ema_args(at::TensorList shadow, at::TensorList params, double decay,
                    c10::DeviceType device);

}  // namespace fastopt
