// fastopt::rmsprop_ on the CPU: validation and step counters on the host,
// then one parallel pass of the per-ISA kernel (see cpu/adam.cpp).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/rmsprop_op.h"
#include "common/tensor_lists.h"
#include "cpu/kernels/rmsprop_kernel.h"
#include "cpu/multi_tensor_apply.h"
#include "cpu/scalars.h"
#include "cpu/update_norms_output.h"

namespace fastopt::cpu {
namespace {

void rmsprop_cpu(const RMSpropArgs& a) {
  check_rmsprop_args(a, c10::DeviceType::CPU);
  if (a.params.empty()) return;
  // A step skipped by AMP leaves everything as it was, step counters included.
  if (a.found_inf.has_value() && read_scalar("found_inf", *a.found_inf) != 0.0) {
    if (a.update_norms.has_value()) a.update_norms->zero_();  // nothing moved
    return;
  }

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

  const size_t n = a.params.size();
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) {
    // torch.optim.RMSprop counts steps but never reads them; the counter is
    // kept for the state_dict, so that checkpoints match torch's.
    increment_step(a.state_steps[i]);
    numels[i] = flat.numel(i);
  }

  const WorkItems items(numels);
  UpdateNormsOutput norms(a.update_norms, n, items);
  const RMSpropKernelFn kernel = rmsprop_kernel();
  items.parallel_for([&](size_t k, const WorkItem& item) {
    auto at = [&](size_t list) { return flat.data_at(list, item.tensor, item.begin); };
    kernel(cfg, RMSpropChunk{at(0), at(1), at(2), at(3), at(4), item.end - item.begin,
                             norms.slot(k)});
  });
  norms.finish(items);
  flat.write_back();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("rmsprop_", &RMSpropOverloads<rmsprop_cpu>::scalar_lr);
  m.impl("rmsprop_.tensor_lr", &RMSpropOverloads<rmsprop_cpu>::tensor_lr);
}

}  // namespace fastopt::cpu
