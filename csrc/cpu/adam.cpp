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
  enum Column : int { kLr = 0, kBeta1, kBeta2, kWeightDecay, kEps };
  const Hyperparams h(a.hparams, {lr, a.beta1, a.beta2, a.weight_decay, a.eps});
  const AdamKernelConfig cfg{dtype,
                             a.decoupled_weight_decay,
                             a.maximize,
                             false,  // has_weight_decay: per tensor, below
                             a.amsgrad,
                             unscale,
                             unscale ? read_scalar("grad_scale", *a.grad_scale) : 1.0};

  const ParamStorage storage = param_storage(a.grads, a.param_copies, a.rounding_seed);
  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, unscale},
                        {"exp_avgs", a.exp_avgs, true},
                        {"exp_avg_sqs", a.exp_avg_sqs, true},
                        {"max_exp_avg_sqs", a.max_exp_avg_sqs, true},
                        {"param_copies", a.param_copies, true}});

  std::vector<AdamScalars<double>> scalars(a.params.size());
  for (size_t i = 0; i < scalars.size(); ++i) {
    const double step = increment_step(a.state_steps[i]);
    scalars[i] = make_adam_scalars<double>(h(i, kLr), h(i, kBeta1), h(i, kBeta2),
                                           h(i, kWeightDecay), h(i, kEps), step);
  }
  const AdamKernelFn kernel = adam_kernel();
  run_fused_step<5>(flat, a.update_norms, [&](size_t tensor, const AdamChunk& chunk) {
    AdamKernelConfig c = cfg;
    c.has_weight_decay = h.nonzero(tensor, kWeightDecay);
    kernel(c, scalars[tensor], chunk);
  }, &storage);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("adam_", &AdamOverloads<adam_cpu>::scalar_lr);
  m.impl("adam_.tensor_lr", &AdamOverloads<adam_cpu>::tensor_lr);
}

}  // namespace fastopt::cpu
