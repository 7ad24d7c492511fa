// Validation shared by the CPU and CUDA implementations of fastopt::ema_.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastopt {

// Shared validation of fastopt::ema_'s lists: one param per shadow tensor, all
// of one floating dtype and on one `device`-type device, matching shapes.
void check_ema_args(at::TensorList shadow, at::TensorList params, double decay,
                    c10::DeviceType device);

// The value of ema_.tensor_decay's decay: one floating-point element on the
// CPU, for params on any device (a device tensor would need a synchronising read).
double ema_decay_value(const at::Tensor& decay);

// Adapts a backend's `impl(shadow, params, decay)` to the ema_.tensor_decay overload.
template <void (*impl)(at::TensorList, at::TensorList, double)>
void ema_tensor_decay(at::TensorList shadow, at::TensorList params, const at::Tensor& decay) {
  impl(shadow, params, ema_decay_value(decay));
}

}  // namespace fastopt
