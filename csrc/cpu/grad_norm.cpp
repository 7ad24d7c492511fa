// fastopt::grad_norm on the CPU: per-ISA partial reductions over (tensor,
// chunk) work items in parallel, combined on the host in item order, so the
// result does not depend on the thread count.
#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/grad_norm_op.h"
#include "cpu/kernels/grad_norm_kernel.h"
#include "cpu/multi_tensor_apply.h"
#include "cpu/scalars.h"

namespace fastopt::cpu {
namespace {

// Folds a run's partial into the running value; NaN wins for max and min, as
// in torch's reductions.
double combine(NormKind kind, double a, double b) {
  if (kind != NormKind::Inf && kind != NormKind::NegInf) return a + b;
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
  return kind == NormKind::Inf ? std::max(a, b) : std::min(a, b);
}

double finish(NormKind kind, double p, double value) {
  switch (kind) {
    case NormKind::Two: return std::sqrt(value);
    case NormKind::P: return std::pow(value, 1.0 / p);
    default: return value;
  }
}

std::tuple<at::Tensor, at::Tensor> grad_norm_cpu(at::TensorList grads, double norm_type) {
  check_grad_norm_args(grads, norm_type, c10::DeviceType::CPU);
  const c10::ScalarType out_dtype = grad_norm_dtype(grads);
  const NormKind kind = norm_kind(norm_type);

  std::vector<at::Tensor> flat;
  std::vector<int64_t> numels;
  flat.reserve(grads.size());
  numels.reserve(grads.size());
  for (const at::Tensor& g : grads) {
    check_supported_dtype("fastopt.grad_norm", g.scalar_type());
    flat.push_back(flat_for_norm(g));
    numels.push_back(g.numel());
  }
  const WorkItems items(numels);
  std::vector<NormPartial> partial(items.size());
  const GradNormKernelFn kernel = grad_norm_kernel();
  items.parallel_for([&](size_t k, const WorkItem& item) {
    const at::Tensor& t = flat[item.tensor];
    const char* base = static_cast<const char*>(t.const_data_ptr());
    kernel(t.scalar_type(), kind, norm_type, base + item.begin * t.element_size(),
           item.end - item.begin, &partial[k]);
  });

  // An empty list (or only empty tensors) has norm 0, like torch's
  // clip_grad_norm_; min |x| over nothing is +inf, as in torch.
  double value = kind == NormKind::NegInf ? std::numeric_limits<double>::infinity() : 0.0;
  bool nonfinite = false;
  for (const NormPartial& part : partial) {
    value = combine(kind, value, part.value);
    nonfinite = nonfinite || std::isnan(part.check);
  }
  if (kind == NormKind::NegInf && items.size() == 0) value = 0.0;
  const auto cpu = at::TensorOptions().device(at::kCPU);
  return {at::scalar_tensor(finish(kind, norm_type, value), cpu.dtype(out_dtype)),
          at::scalar_tensor(nonfinite ? 1.0 : 0.0, cpu.dtype(at::kFloat))};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) { m.impl("grad_norm", &grad_norm_cpu); }

}  // namespace fastopt::cpu
