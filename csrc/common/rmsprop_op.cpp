#include "common/rmsprop_op.h"

#include "common/tensor_lists.h"

namespace fastopt {

void check_rmsprop_args(const RMSpropArgs& a, c10::DeviceType device) {
  constexpr const char* op = "fastopt.rmsprop_";
  check_tensor_lists(op, {{"params", a.params, true},
                          {"grads", a.grads, true, !a.param_copies.empty()},
                          {"square_avgs", a.square_avgs, true},
                          {"grad_avgs", a.grad_avgs, true},
                          {"momentum_buffers", a.momentum_buffers, true}});
  const size_t n = a.params.size();
  TORCH_CHECK(a.grads.size() == n && a.square_avgs.size() == n, op,
              ": grads and square_avgs must have one tensor per param");
  // The optional state must be present exactly when the hyperparameters use
  // it: a stale or missing buffer would otherwise be silently ignored.
  TORCH_CHECK(a.grad_avgs.size() == (a.centered ? n : 0), op,
              ": grad_avgs must have one tensor per param when centered=True and be empty "
              "otherwise, got ",
              a.grad_avgs.size(), " for ", n, " params");
  TORCH_CHECK(a.momentum_buffers.size() == (a.has_momentum() ? n : 0), op,
              ": momentum_buffers must have one tensor per param when momentum > 0 and be empty "
              "otherwise, got ",
              a.momentum_buffers.size(), " for ", n, " params");
  if (n == 0) return;
  check_optimizer_args(op, a.params, a.state_steps, device, a.lr_tensor, a.grad_scale,
                       a.found_inf);
  check_param_storage(op, a.params, a.grads, a.param_copies, a.rounding_seed);
  check_hparams(op, a.hparams, a.params.size(), 5, a.params[0].device());
}

}  // namespace fastopt
