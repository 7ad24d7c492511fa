#include "common/adam_op.h"

#include "common/tensor_lists.h"

namespace fastopt {

void check_adam_args(const AdamArgs& a, c10::DeviceType device) {
  constexpr const char* op = "fastopt.adam_";
  check_tensor_lists(op, {{"params", a.params, true},
                          {"grads", a.grads, true},
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

  const at::Tensor& p0 = a.params[0];
  TORCH_CHECK(p0.device().type() == device, op, ": expected ", device, " tensors, got ",
              p0.device());
  TORCH_CHECK_TYPE(p0.is_floating_point(), op, ": params must be floating point, got ",
                   p0.scalar_type());
  // Step counters stay on the CPU for CPU params, and live on the GPU for CUDA
  // params so that the update never synchronises with the host.
  check_state_steps(op, a.state_steps, a.params.size(), p0.device());
  if (a.lr_tensor != nullptr) {
    TORCH_CHECK(a.lr_tensor->numel() == 1, op, ": Tensor lr must be 1-element");
  }
  for (const auto* t : {&a.grad_scale, &a.found_inf}) {
    if (t->has_value()) {
      TORCH_CHECK((*t)->numel() == 1, op, ": grad_scale and found_inf must be 1-element");
    }
  }
}

}  // namespace fastopt
