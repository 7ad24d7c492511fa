// fastopt::adagrad_ on the CPU: validation, step counters and per-tensor
// decayed learning rates on the host, then one parallel pass of the per-ISA kernel.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "common/adagrad_op.h"
#include "common/tensor_lists.h"
#include "cpu/fused_step.h"
#include "cpu/kernels/adagrad_kernel.h"

namespace fastopt::cpu {
namespace {

void adagrad_cpu(const AdagradArgs& a) {
  check_adagrad_args(a, c10::DeviceType::CPU);
  if (a.params.empty()) return;
  if (step_skipped(a.found_inf, a.update_norms)) return;

  const c10::ScalarType dtype = a.params[0].scalar_type();
  check_supported_dtype("fastopt.adagrad_", dtype);
  const double lr = a.lr_tensor != nullptr ? read_scalar("lr", *a.lr_tensor) : a.lr;
  const bool unscale = a.grad_scale.has_value();
  enum Column : int { kLr = 0, kLrDecay, kWeightDecay, kEps };
  const Hyperparams h(a.hparams, {lr, a.lr_decay, a.weight_decay, a.eps});
  const AdagradKernelConfig cfg{dtype, a.maximize, false /* per tensor, below */, unscale,
                                unscale ? read_scalar("grad_scale", *a.grad_scale) : 1.0};

  const ParamStorage storage = param_storage(a.grads, a.param_copies, a.rounding_seed);
  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, unscale},
                        {"state_sums", a.state_sums, true},
                        {"param_copies", a.param_copies, true}});
  // Tensors lag behind each other when some got no gradient on some steps,
  // so every tensor has its own step and decayed lr.
  std::vector<AdagradCoeffs<double>> coeffs(a.params.size());
  for (size_t i = 0; i < coeffs.size(); ++i) {
    const double step = increment_step(a.state_steps[i]);
    coeffs[i] = make_adagrad_coeffs(h(i, kLr), h(i, kLrDecay), h(i, kWeightDecay), h(i, kEps), step);
  }
  const AdagradKernelFn kernel = adagrad_kernel();
  run_fused_step<3>(flat, a.update_norms, [&](size_t tensor, const AdagradChunk& chunk) {
    AdagradKernelConfig c = cfg;
    c.has_weight_decay = h.nonzero(tensor, kWeightDecay);
    kernel(c, coeffs[tensor], chunk);
  }, &storage);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("adagrad_", &AdagradOverloads<adagrad_cpu>::scalar_lr);
  m.impl("adagrad_.tensor_lr", &AdagradOverloads<adagrad_cpu>::tensor_lr);
}

}  // namespace fastopt::cpu
