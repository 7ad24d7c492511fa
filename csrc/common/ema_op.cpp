#include "common/ema_op.h"

#include "common/tensor_lists.h"

namespace fastopt {

void check_ema_args(at::TensorList shadow, at::TensorList params, double decay,
                    c10::DeviceType device) {
  constexpr const char* op = "fastopt.ema_";
  check_tensor_lists(op, {{"shadow", shadow, true}, {"params", params, false}});
  TORCH_CHECK(params.size() == shadow.size(), op, ": params has ", params.size(),
              " tensors but shadow has ", shadow.size());
  TORCH_CHECK(decay >= 0.0 && decay <= 1.0, op, ": decay must be in [0, 1], got ", decay);
  if (shadow.empty()) return;
  TORCH_CHECK(shadow[0].device().type() == device, op, ": expected ", device, " tensors, got ",
              shadow[0].device());
  TORCH_CHECK_TYPE(shadow[0].is_floating_point(), op,
                   ": only floating-point tensors are averaged, got ", shadow[0].scalar_type());
}

double ema_decay_value(const at::Tensor& decay) {
  constexpr const char* op = "fastopt.ema_";
  TORCH_CHECK(decay.device().is_cpu(), op, ": a tensor decay must be on the CPU, got ",
              decay.device());
  TORCH_CHECK(decay.numel() == 1, op, ": a tensor decay must hold one element, got ", decay.numel());
  TORCH_CHECK_TYPE(decay.is_floating_point(), op, ": a tensor decay must be floating point, got ",
                   decay.scalar_type());
  return decay.item<double>();
}

}  // namespace fastopt
