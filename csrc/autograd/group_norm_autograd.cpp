// Autograd of fastopt::group_norm_fwd, which serves GroupNorm (with its fused
// activation), LayerNorm and InstanceNorm (see batch_norm_autograd.cpp for
// why autograd lives in C++).
#include <ATen/TensorOperators.h>
#include <ATen/ops/group_norm.h>
#include <ATen/ops/layer_norm.h>
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
      op_handle<Tensor3(const Tensor&, const OptTensor&, const OptTensor&, int64_t, double, int64_t, int64_t)>(
          "fastopt::group_norm_fwd");
  return op;
}
const auto& bwd_op() {
  static const auto op = op_handle<Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                           const OptTensor&, const OptTensor&, int64_t, int64_t, int64_t)>(
      "fastopt::group_norm_bwd");
  return op;
}

// The forward op's function in torch's differentiable ops, for the double
// backward (NOTE: [double backward] in autograd/common.h): a layer norm over
// x's last normalized_ndim dims, or a group norm.
Tensor group_norm_composite(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups,
                            double eps, int64_t activation, int64_t normalized_ndim) {
  Tensor y;
  if (normalized_ndim > 0) {
    y = at::layer_norm(x, x.sizes().slice(x.dim() - normalized_ndim), optional_of(weight),
                       optional_of(bias), eps, /*cudnn_enable=*/false);
  } else if (!weight.defined() && bias.defined()) {
    // at::group_norm rejects a bias without a weight, which the functional
    // instance_norm can pass: the bias is added apart.
    y = at::group_norm(x, groups, {}, {}, eps, /*cudnn_enabled=*/false) + bias.reshape(channel_shape(x));
  } else {
    y = at::group_norm(x, groups, optional_of(weight), optional_of(bias), eps, /*cudnn_enabled=*/false);
  }
  switch (static_cast<NormActivation>(activation)) {
    case NormActivation::ReLU: return at::relu(y);
    case NormActivation::SiLU: return at::silu(y);
    case NormActivation::None: break;
  }
  return y;
}

// y alone; mean and rstd go to *stats (NOTE: [one differentiable output]).
struct GroupNorm : torch::autograd::Function<GroupNorm> {
  static constexpr size_t kArgs = 8;  // forward's arguments after ctx

  static Tensor forward(AutogradContext* ctx, const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                        int64_t groups, double eps, int64_t activation, int64_t normalized_ndim, Stats* stats) {
    Tensor y, mean, rstd;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(y, mean, rstd) = fwd_op().call(x, weight, bias, groups, eps, activation, normalized_ndim);
    }
    // Only x and the per-group statistics; weight and bias are the module's
    // parameters, held anyway (bias recomputes the activation's input).
    ctx->save_for_backward({x, mean, rstd, weight.value_or(Tensor()), bias.value_or(Tensor())});
    *stats = {mean, rstd};
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["normalized_ndim"] = normalized_ndim;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();  // first: NOTE: [unpack before going below autograd]
    const BackwardDispatch dispatch;  // NOTE: [backward below autograd]
    const Tensor &x = saved[0], &mean = saved[1], &rstd = saved[2], &weight = saved[3], &bias = saved[4];
    const InputEdges edges({x, optional_of(weight), optional_of(bias)});
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const int64_t activation = ctx->saved_data["activation"].toInt();
    const int64_t normalized_ndim = ctx->saved_data["normalized_ndim"].toInt();
    const bool want_x = edges.needs_grad(ctx, 0), want_w = edges.needs_grad(ctx, 1),
               want_b = edges.needs_grad(ctx, 2);
    if (building_backward_graph()) {  // NOTE: [double backward]
      const Tensor y = group_norm_composite(x, weight, bias, groups, ctx->saved_data["eps"].toDouble(), activation,
                                            normalized_ndim);
      const variable_list g = differentiable_grads(y, grads[0], {{x, want_x}, {weight, want_w}, {bias, want_b}});
      return input_grads(kArgs, {g[0], g[1], g[2]});
    }
    auto [dx, dw, db] = bwd_op().call(grads[0], x, mean, rstd, optional_of(weight), optional_of(bias), groups,
                                      activation, normalized_ndim);
    // The op returns [C]; LayerNorm's weight has the normalized shape.
    return input_grads(kArgs, {want_x ? dx : Tensor(), want_w ? dw.view(weight.sizes()) : Tensor(),
                               want_b ? db.view(bias.sizes()) : Tensor()});
  }
};

Tensor3 group_norm_fwd_autograd(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                                int64_t groups, double eps, int64_t activation, int64_t normalized_ndim) {
  if (!any_records_history(x, weight, bias)) {  // NOTE: [forward without history] in autograd/common.h
    return below_autograd(fwd_op(), x, weight, bias, groups, eps, activation, normalized_ndim);
  }
  Stats stats;
  Tensor y = GroupNorm::apply(x, weight, bias, groups, eps, activation, normalized_ndim, &stats);
  return {std::move(y), std::move(stats[0]), std::move(stats[1])};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, Autograd, m) { m.impl("group_norm_fwd", &group_norm_fwd_autograd); }

}  // namespace fastopt::autograd
