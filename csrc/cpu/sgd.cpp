// fastopt::sgd_ on the CPU: validation and scalars on the host, then one
// parallel pass of the per-ISA kernel. SGD keeps no step counter.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/sgd_op.h"
#include "common/tensor_lists.h"
#include "cpu/fused_step.h"
#include "cpu/kernels/sgd_kernel.h"

namespace fastopt::cpu {
namespace {

void sgd_cpu(const SgdArgs& a) {
  check_sgd_args(a, c10::DeviceType::CPU);
  if (a.params.empty()) return;
  // A skipped first step leaves the new buffers as the caller allocated them:
  // fastopt.optim.SGD zeroes them, so they never hold garbage.
  if (step_skipped(a.found_inf, a.update_norms)) return;

  const c10::ScalarType dtype = a.params[0].scalar_type();
  check_supported_dtype("fastopt.sgd_", dtype);
  const double lr = a.lr_tensor != nullptr ? read_scalar("lr", *a.lr_tensor) : a.lr;
  const bool unscale = a.grad_scale.has_value();
  const SgdKernelConfig cfg{dtype,
                            !a.momentum_buffers.empty(),
                            SgdOptions{a.maximize, a.weight_decay != 0.0, a.nesterov,
                                       a.is_first_step},
                            unscale,
                            unscale ? read_scalar("grad_scale", *a.grad_scale) : 1.0};
  const SgdCoeffs<double> coeffs = make_sgd_coeffs(lr, a.momentum, a.dampening, a.weight_decay);

  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, unscale},
                        {"momentum_buffers", a.momentum_buffers, true}});
  const SgdKernelFn kernel = sgd_kernel();
  run_fused_step<3>(flat, a.update_norms,
                    [&](size_t, const SgdChunk& chunk) { kernel(cfg, coeffs, chunk); });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("sgd_", &SgdOverloads<sgd_cpu>::scalar_lr);
  m.impl("sgd_.tensor_lr", &SgdOverloads<sgd_cpu>::tensor_lr);
}

}  // namespace fastopt::cpu
