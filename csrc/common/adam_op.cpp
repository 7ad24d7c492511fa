#include "common/adam_op.h"

#include "common/tensor_lists.h"

namespace fastopt {

void check_adam_args(const AdamArgs& a, c10::DeviceType device) {
  constexpr const char* op = "fastopt.adam_";
  check_tensor_lists(op, {{"params", a.params, true},
                          {"grads", a.grads, true, !a.param_copies.empty()},
                          {"exp_avgs", a.exp_avgs, true},
                          {"exp_avg_sqs", a.exp_avg_sqs, true},
                          {"max_exp_avg_sqs", a.max_exp_avg_sqs, true}});
  TORCH_CHECK(a.grads.size() == a.params.size() && a.exp_avgs.size() == a.params.size() &&
                  a.exp_avg_sqs.size() == a.params.size(),
              op, ": grads, exp_avgs and exp_avg_sqs must have one tensor per param");
  TORCH_CHECK(a.max_exp_avg_sqs.size() == (a.amsgrad ? a.params.size() : 0), op,
              ": max_exp_avg_sqs must have one tensor per param when amsgrad=True and be empty "
              "otherwise, got ",
              a.max_exp_avg_sqs.size(), " for ", a.params.size(), " params");
  if (a.params.empty()) return;

  check_optimizer_args(op, a.params, a.state_steps, device, a.lr_tensor, a.grad_scale,
                       a.found_inf);
  check_param_storage(op, a.params, a.grads, a.param_copies, a.rounding_seed);
  check_hparams(op, a.hparams, a.params.size(), 5, a.params[0].device());
}

}  // namespace fastopt
