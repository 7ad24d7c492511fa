// Autograd of fastopt::group_norm_fwd, which serves GroupNorm (with its fused
// activation), LayerNorm and InstanceNorm (see batch_norm_autograd.cpp for
// why autograd lives in C++).
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

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
    ctx->saved_data["activation"] = activation;
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &mean = saved[1], &rstd = saved[2], &weight = saved[3], &bias = saved[4];
    const InputEdges edges(ctx);
    auto [dx, dw, db] = bwd_op().call(grads[0], x, mean, rstd, optional_of(weight), optional_of(bias),
                                      ctx->saved_data["groups"].toInt(), ctx->saved_data["activation"].toInt());
    // The op returns [C]; LayerNorm's weight has the normalized shape.
    return {edges.needs_grad(ctx, 0) ? dx : Tensor(),
            edges.needs_grad(ctx, 1) ? dw.view(weight.sizes()) : Tensor(),
            edges.needs_grad(ctx, 2) ? db.view(bias.sizes()) : Tensor(),
            Tensor(), Tensor(), Tensor()};
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
