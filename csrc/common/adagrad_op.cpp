#include "common/adagrad_op.h"

#include "common/tensor_lists.h"

namespace fastopt {

void check_adagrad_args(const AdagradArgs& a, c10::DeviceType device) {
  constexpr const char* op = "fastopt.adagrad_";
  check_tensor_lists(op, {{"params", a.params, true},
                          {"grads", a.grads, true, !a.param_copies.empty()},
                          {"state_sums", a.state_sums, true}});
  TORCH_CHECK(a.grads.size() == a.params.size() && a.state_sums.size() == a.params.size(), op,
              ": grads and state_sums must have one tensor per param");
  if (a.params.empty()) return;
  check_optimizer_args(op, a.params, a.state_steps, device, a.lr_tensor, a.grad_scale,
                       a.found_inf);
  check_param_storage(op, a.params, a.grads, a.param_copies, a.rounding_seed);
  check_hparams(op, a.hparams, a.params.size(), 4, a.params[0].device());
}

}  // namespace fastopt
