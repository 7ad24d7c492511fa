// fastopt::rmsprop_ on the CPU: validation and step counters on the host,
// then one parallel pass of the per-ISA kernel (see cpu/adam.cpp).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/rmsprop_op.h"
#include "common/tensor_lists.h"
#include "cpu/fused_step.h"
#include "cpu/kernels/rmsprop_kernel.h"

namespace fastopt::cpu {
namespace {

void rmsprop_cpu(const RMSpropArgs& a) {
  check_rmsprop_args(a, c10::DeviceType::CPU);
  if (a.params.empty()) return;
  if (step_skipped(a.found_inf, a.update_norms)) return;

  const c10::ScalarType dtype = a.params[0].scalar_type();
  check_supported_dtype("fastopt.rmsprop_", dtype);
  const bool unscale = a.grad_scale.has_value();
  const size_t n = a.params.size();
  enum Column : int { kLr = 0, kAlpha, kEps, kWeightDecay, kMomentum };
  const double lr = a.lr_tensor != nullptr ? read_scalar("lr", *a.lr_tensor) : a.lr;
  const Hyperparams h(a.hparams, {lr, a.alpha, a.eps, a.weight_decay, a.momentum});
  const RMSpropKernelConfig cfg{dtype,
                                a.centered,
                                a.has_momentum(),
                                a.maximize,
                                h.nonzero(0, kWeightDecay),  // per tensor with a table, below
                                unscale,
                                unscale ? read_scalar("grad_scale", *a.grad_scale) : 1.0,
                                lr,
                                a.alpha,
                                a.eps,
                                a.weight_decay,
                                a.momentum};

  const ParamStorage storage = param_storage(a.grads, a.param_copies, a.rounding_seed);
  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, unscale},
                        {"square_avgs", a.square_avgs, true},
                        {"grad_avgs", a.grad_avgs, true},
                        {"momentum_buffers", a.momentum_buffers, true},
                        {"param_copies", a.param_copies, true}});

  // torch.optim.RMSprop counts steps but never reads them; the counter is
  // kept for the state_dict, so that checkpoints match torch's.
  for (const at::Tensor& step : a.state_steps) increment_step(step);

  // One config per call, or per tensor with a hyperparameter table.
  std::vector<RMSpropKernelConfig> cfgs(a.hparams.has_value() ? n : 1, cfg);
  for (size_t i = 0; i < cfgs.size() && a.hparams.has_value(); ++i) {
    cfgs[i].lr = h(i, kLr);
    cfgs[i].alpha = h(i, kAlpha);
    cfgs[i].eps = h(i, kEps);
    cfgs[i].weight_decay = h(i, kWeightDecay);
    cfgs[i].has_weight_decay = h.nonzero(i, kWeightDecay);
    cfgs[i].momentum = h(i, kMomentum);
  }
  const RMSpropKernelFn kernel = rmsprop_kernel();
  run_fused_step<5>(flat, a.update_norms, [&](size_t tensor, const RMSpropChunk& chunk) {
    kernel(cfgs[cfgs.size() == 1 ? 0 : tensor], chunk);
  }, &storage);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("rmsprop_", &RMSpropOverloads<rmsprop_cpu>::scalar_lr);
  m.impl("rmsprop_.tensor_lr", &RMSpropOverloads<rmsprop_cpu>::tensor_lr);
}

}  // namespace fastopt::cpu
