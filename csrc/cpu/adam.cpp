// fastopt::adam_ on the CPU: validation, step counters and per-tensor
// scalars on the host, then one parallel pass of the per-ISA kernel.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/adam_op.h"
#include "common/tensor_lists.h"
#include "cpu/fused_step.h"
#include "cpu/kernels/adam_kernel.h"

namespace fastopt::cpu {
namespace {

void adam_cpu(const AdamArgs& a) {
  check_adam_args(a, c10::DeviceType::CPU);
  if (a.params.empty()) return;
  if (step_skipped(a.found_inf, a.update_norms)) return;

  const c10::ScalarType dtype = a.params[0].scalar_type();
  check_supported_dtype("fastopt.adam_", dtype);
  const double lr = a.lr_tensor != nullptr ? read_scalar("lr", *a.lr_tensor) : a.lr;
  const bool unscale = a.grad_scale.has_value();
  const AdamKernelConfig cfg{dtype,
                             a.decoupled_weight_decay,
                             a.maximize,
                             a.weight_decay != 0.0,
                             a.amsgrad,
                             unscale,
                             unscale ? read_scalar("grad_scale", *a.grad_scale) : 1.0};

  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, unscale},
                        {"exp_avgs", a.exp_avgs, true},
                        {"exp_avg_sqs", a.exp_avg_sqs, true},
                        {"max_exp_avg_sqs", a.max_exp_avg_sqs, true}});

  std::vector<AdamScalars<double>> scalars(a.params.size());
  for (size_t i = 0; i < scalars.size(); ++i) {
    const double step = increment_step(a.state_steps[i]);
    scalars[i] = make_adam_scalars<double>(lr, a.beta1, a.beta2, a.weight_decay, a.eps, step);
  }
  const AdamKernelFn kernel = adam_kernel();
  run_fused_step<5>(flat, a.update_norms, [&](size_t tensor, const AdamChunk& chunk) {
    kernel(cfg, scalars[tensor], chunk);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("adam_", &AdamOverloads<adam_cpu>::scalar_lr);
  m.impl("adam_.tensor_lr", &AdamOverloads<adam_cpu>::tensor_lr);
}

}  // namespace fastopt::cpu
