// fastopt::ema_ on the CPU: shadow[i] = lerp(shadow[i], params[i], 1 - decay)
// for every tensor, in one parallel pass of the per-ISA kernel.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/ema_op.h"
#include "common/tensor_lists.h"
#include "cpu/fused_step.h"
#include "cpu/kernels/ema_kernel.h"

namespace fastopt::cpu {
namespace {

void ema_cpu(at::TensorList shadow, at::TensorList params, double decay) {
  check_ema_args(shadow, params, decay, c10::DeviceType::CPU);
  if (shadow.empty()) return;
  const c10::ScalarType dtype = shadow[0].scalar_type();
  check_supported_dtype("fastopt.ema_", dtype);

  // The shadow is list 0: a non-dense param is walked in the shadow's layout.
  FlatTensorLists flat({{"shadow", shadow, true}, {"params", params, false}});

  // 1 - decay in double, as Python computes the weight it hands to
  // torch._foreach_lerp_; the kernel rounds it to its arithmetic type.
  const double weight = 1.0 - decay;
  const EmaKernelFn kernel = ema_kernel();
  // EMA has no update norms: the chunks' norms slot stays null.
  run_fused_step<2>(flat, c10::nullopt,
                    [&](size_t, const EmaChunk& chunk) { kernel(dtype, weight, chunk); });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("ema_", &ema_cpu);
  m.impl("ema_.tensor_decay", &ema_tensor_decay<ema_cpu>);
}

}  // namespace fastopt::cpu
