// fastopt::adam_ on the CPU: validation, step counters and per-tensor
// scalars on the host, then one parallel pass of the per-ISA kernel.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/adam_op.h"
#include "common/tensor_lists.h"
#include "cpu/kernels/adam_kernel.h"
#include "cpu/multi_tensor_apply.h"
#include "cpu/scalars.h"
#include "cpu/update_norms_output.h"

namespace fastopt::cpu {
namespace {

void adam_cpu(const AdamArgs& a) {
  check_adam_args(a, c10::DeviceType::CPU);
  if (a.params.empty()) return;
  // A step skipped by AMP leaves everything as it was, step counters included.
  if (a.found_inf.has_value() && read_scalar("found_inf", *a.found_inf) != 0.0) {
    if (a.update_norms.has_value()) a.update_norms->zero_();  // nothing moved
    return;
  }

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

  const size_t n = a.params.size();
  std::vector<AdamScalars<double>> scalars(n);
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) {
    const double step = increment_step(a.state_steps[i]);
    scalars[i] = make_adam_scalars<double>(lr, a.beta1, a.beta2, a.weight_decay, a.eps, step);
    numels[i] = flat.numel(i);
  }

  const WorkItems items(numels);
  UpdateNormsOutput norms(a.update_norms, n, items);
  const AdamKernelFn kernel = adam_kernel();
  items.parallel_for([&](size_t k, const WorkItem& item) {
    auto at = [&](size_t list) { return flat.data_at(list, item.tensor, item.begin); };
    kernel(cfg, scalars[item.tensor],
           AdamChunk{at(0), at(1), at(2), at(3), at(4), item.end - item.begin, norms.slot(k)});
  });
  norms.finish(items);
  flat.write_back();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("adam_", &AdamOverloads<adam_cpu>::scalar_lr);
  m.impl("adam_.tensor_lr", &AdamOverloads<adam_cpu>::tensor_lr);
}

}  // namespace fastopt::cpu
