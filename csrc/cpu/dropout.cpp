// fastopt::dropout, dropout_ and dropout_add on the CPU: validation, the
// per-call key, then one parallel pass of the per-ISA kernel.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/dropout_op.h"
#include "common/philox.h"
#include "cpu/kernels/dropout_kernel.h"
#include "cpu/multi_tensor_apply.h"

namespace fastopt::cpu {
namespace {

// Runs the kernel over `in`, writing `out` (contiguous, like in.x; may be in.x).
void run_dropout(const DropoutInputs& in, const at::Tensor& seed, double p, const at::Tensor& out) {
  const int64_t n = in.x.numel();
  if (n == 0) return;
  const at::Tensor words = seed.contiguous();
  const DropoutMaskParams mask = dropout_mask_params(p);
  const DropoutKernelConfig cfg{in.x.scalar_type(),
                                dropout_key(words.const_data_ptr<int64_t>()),
                                mask.threshold,
                                mask.drop_all,
                                mask.keep_prob,
                                in.group,
                                in.bias.defined() ? in.bias.numel() : 0};
  auto ptr = [](const at::Tensor& t) -> const void* { return t.defined() ? t.const_data_ptr() : nullptr; };
  const DropoutChunk whole{ptr(in.x), ptr(in.bias), ptr(in.residual), out.mutable_data_ptr(), 0, n};
  const DropoutKernelFn kernel = dropout_kernel();
  // The chunks of WorkItems are multiples of a Philox block (64 elements), so
  // no block is drawn twice.
  const WorkItems items({n});
  items.parallel_for([&](size_t, const WorkItem& item) {
    DropoutChunk c = whole;
    c.begin = item.begin;
    c.end = item.end;
    kernel(cfg, c);
  });
}

at::Tensor dropout_cpu(const at::Tensor& x, const at::Tensor& seed, double p, int64_t group) {
  const DropoutInputs in = check_dropout_args("fastopt.dropout", x, seed, p, group, nullptr,
                                              c10::nullopt, c10::DeviceType::CPU);
  at::Tensor out = at::empty_like(in.x);
  run_dropout(in, seed, p, out);
  return out;
}

void dropout_inplace_cpu(const at::Tensor& x, const at::Tensor& seed, double p, int64_t group) {
  const DropoutInputs in = check_dropout_args("fastopt.dropout_", x, seed, p, group, nullptr,
                                              c10::nullopt, c10::DeviceType::CPU);
  run_dropout(in, seed, p, in.x);
  // A non-contiguous x was computed in a contiguous temporary.
  if (!in.x.is_same(x)) x.copy_(in.x);
}

at::Tensor dropout_add_cpu(const at::Tensor& x, const at::Tensor& residual,
                           const c10::optional<at::Tensor>& bias, const at::Tensor& seed, double p) {
  const DropoutInputs in = check_dropout_args("fastopt.dropout_add", x, seed, p, 1, &residual,
                                              bias, c10::DeviceType::CPU);
  at::Tensor out = at::empty_like(in.x);
  run_dropout(in, seed, p, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("dropout", &dropout_cpu);
  m.impl("dropout_", &dropout_inplace_cpu);
  m.impl("dropout_add", &dropout_add_cpu);
}

}  // namespace fastopt::cpu
