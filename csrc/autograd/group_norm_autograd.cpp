// Autograd of fastopt::group_norm_fwd, which serves GroupNorm (with its fused
// activation), LayerNorm and InstanceNorm (see batch_norm_autograd.cpp for
// why autograd lives in C++).
#include <ATen/ops/group_norm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "common/norm_activation.h"

#include "autograd/common.h"
#include "autograd/input_edges.h"

namespace fastopt::autograd {
namespace {

using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;

const auto& fwd_op() {
  static const auto op =
      op_handle<Tensor3(const Tensor&, const OptTensor&, const OptTensor&, int64_t, double, int64_t)>(
          "fastopt::group_norm_fwd");
  return op;
}
const auto& bwd_op() {
  static const auto op = op_handle<Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                           const OptTensor&, const OptTensor&, int64_t, int64_t)>(
      "fastopt::group_norm_bwd");
  return op;
}

// The forward op's function in torch's differentiable ops, for the double
// backward (NOTE: [double backward] in autograd/common.h). LayerNorm's x is
// already its (rows, K) view with one group, and its weight has the
// normalized shape, hence the reshapes to [C].
Tensor group_norm_composite(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups,
                            double eps, int64_t activation) {
  const int64_t C = x.size(1);
  auto param = [&](const Tensor& t) { return t.defined() ? OptTensor(t.reshape({C})) : c10::nullopt; };
  const Tensor y = at::group_norm(x, groups, param(weight), param(bias), eps, /*cudnn_enabled=*/false);
  switch (static_cast<NormActivation>(activation)) {
    case NormActivation::ReLU: return at::relu(y);
    case NormActivation::SiLU: return at::silu(y);
    case NormActivation::None: break;
  }
  return y;
}

struct GroupNorm : torch::autograd::Function<GroupNorm> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& weight,
                               const OptTensor& bias, int64_t groups, double eps, int64_t activation) {
    Tensor y, mean, rstd;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(y, mean, rstd) = fwd_op().call(x, weight, bias, groups, eps, activation);
    }
    // Only x and the per-group statistics; weight and bias are the module's
    // parameters, held anyway (bias recomputes the activation's input).
    ctx->save_for_backward({x, mean, rstd, weight.value_or(Tensor()), bias.value_or(Tensor())});
    ctx->mark_non_differentiable({mean, rstd});
    InputEdges({x, weight, bias}).save(ctx);
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = activation;
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const BackwardDispatch dispatch;  // NOTE: [backward below autograd]
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &mean = saved[1], &rstd = saved[2], &weight = saved[3], &bias = saved[4];
    const InputEdges edges(ctx);
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const int64_t activation = ctx->saved_data["activation"].toInt();
    const bool want_x = edges.needs_grad(ctx, 0), want_w = edges.needs_grad(ctx, 1),
               want_b = edges.needs_grad(ctx, 2);
    if (building_backward_graph()) {  // NOTE: [double backward]
      const Tensor y = group_norm_composite(x, weight, bias, groups, ctx->saved_data["eps"].toDouble(), activation);
      const variable_list g = differentiable_grads(y, grads[0], {{x, want_x}, {weight, want_w}, {bias, want_b}});
      return {g[0], g[1], g[2], Tensor(), Tensor(), Tensor()};
    }
    auto [dx, dw, db] = bwd_op().call(grads[0], x, mean, rstd, optional_of(weight), optional_of(bias), groups,
                                      activation);
    // The op returns [C]; LayerNorm's weight has the normalized shape.
    return {want_x ? dx : Tensor(), want_w ? dw.view(weight.sizes()) : Tensor(),
            want_b ? db.view(bias.sizes()) : Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor3 group_norm_fwd_autograd(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                                int64_t groups, double eps, int64_t activation) {
  const variable_list out = GroupNorm::apply(x, weight, bias, groups, eps, activation);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, Autograd, m) { m.impl("group_norm_fwd", &group_norm_fwd_autograd); }

}  // namespace fastopt::autograd
