#include "common/sgd_op.h"

#include "common/tensor_lists.h"

namespace fastopt {

void check_sgd_args(const SgdArgs& a, c10::DeviceType device) {
  constexpr const char* op = "fastopt.sgd_";
  check_tensor_lists(op, {{"params", a.params, true},
                          {"grads", a.grads, true, !a.param_copies.empty()},
                          {"momentum_buffers", a.momentum_buffers, true}});
  TORCH_CHECK(a.grads.size() == a.params.size(), op, ": grads must have one tensor per param");
  TORCH_CHECK(a.momentum_buffers.size() == (a.momentum != 0.0 ? a.params.size() : 0), op,
              ": momentum_buffers must have one tensor per param when momentum != 0 and be "
              "empty otherwise, got ",
              a.momentum_buffers.size(), " for ", a.params.size(), " params");
  if (a.params.empty()) return;
  check_optimizer_args(op, a.params, c10::nullopt, device, a.lr_tensor, a.grad_scale,
                       a.found_inf);
  check_param_storage(op, a.params, a.grads, a.param_copies, a.rounding_seed);
  check_hparams(op, a.hparams, a.params.size(), 4, a.params[0].device());
}

}  // namespace fastopt
