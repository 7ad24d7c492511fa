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
  const RMSpropKernelConfig cfg{dtype,
                                a.centered,
                                a.has_momentum(),
                                a.maximize,
                                a.weight_decay != 0.0,
                                unscale,
                                unscale ? read_scalar("grad_scale", *a.grad_scale) : 1.0,
                                a.lr_tensor != nullptr ? read_scalar("lr", *a.lr_tensor) : a.lr,
                                a.alpha,
                                a.eps,
                                a.weight_decay,
                                a.momentum};

  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, unscale},
                        {"square_avgs", a.square_avgs, true},
                        {"grad_avgs", a.grad_avgs, true},
                        {"momentum_buffers", a.momentum_buffers, true}});

  // torch.optim.RMSprop counts steps but never reads them; the counter is
  // kept for the state_dict, so that checkpoints match torch's.
  for (const at::Tensor& step : a.state_steps) increment_step(step);

  const RMSpropKernelFn kernel = rmsprop_kernel();
  run_fused_step<5>(flat, a.update_norms,
                    [&](size_t, const RMSpropChunk& chunk) { kernel(cfg, chunk); });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("rmsprop_", &RMSpropOverloads<rmsprop_cpu>::scalar_lr);
  m.impl("rmsprop_.tensor_lr", &RMSpropOverloads<rmsprop_cpu>::tensor_lr);
}

}  // namespace fastopt::cpu
