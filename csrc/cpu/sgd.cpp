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
  const size_t n = a.params.size();
  enum Column : int { kLr = 0, kMomentum, kDampening, kWeightDecay };
  const Hyperparams h(a.hparams, {lr, a.momentum, a.dampening, a.weight_decay});
  const SgdKernelConfig cfg{dtype,
                            !a.momentum_buffers.empty(),
                            SgdOptions{a.maximize, false /* per tensor, below */, a.nesterov,
                                       a.is_first_step},
                            unscale,
                            unscale ? read_scalar("grad_scale", *a.grad_scale) : 1.0};
  // SGD's coefficients do not depend on a step: one set per call, or per
  // tensor with a hyperparameter table.
  std::vector<SgdCoeffs<double>> coeffs(a.hparams.has_value() ? n : 1);
  for (size_t i = 0; i < coeffs.size(); ++i) {
    coeffs[i] = make_sgd_coeffs(h(i, kLr), h(i, kMomentum), h(i, kDampening), h(i, kWeightDecay));
  }

  const ParamStorage storage = param_storage(a.grads, a.param_copies, a.rounding_seed);
  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, unscale},
                        {"momentum_buffers", a.momentum_buffers, true},
                        {"param_copies", a.param_copies, true}});
  const SgdKernelFn kernel = sgd_kernel();
  run_fused_step<3>(flat, a.update_norms,
                    [&](size_t tensor, const SgdChunk& chunk) {
                      SgdKernelConfig c = cfg;
                      c.options.has_weight_decay = h.nonzero(tensor, kWeightDecay);
                      kernel(c, coeffs[coeffs.size() == 1 ? 0 : tensor], chunk);
                    }, &storage);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("sgd_", &SgdOverloads<sgd_cpu>::scalar_lr);
  m.impl("sgd_.tensor_lr", &SgdOverloads<sgd_cpu>::tensor_lr);
}

}  // namespace fastopt::cpu
