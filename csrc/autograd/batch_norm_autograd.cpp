// Autograd of fastopt::batch_norm_fwd (training: batch statistics) and
// fastopt::batch_norm_apply (evaluation: running statistics), and the
// composite batch_norm_eval on top of the latter.
//
// In C++ rather than torch.library.register_autograd: a Python autograd
// kernel costs ~70 us per forward+backward on the host, more than the whole
// layer at small sizes and far more than a GPU kernel; here it is a few us.
// The forward ops run below the autograd key, so torch.compile traces them
// through their fake kernels (fastopt/_ops/batch_norm.py) as before.
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/batch_norm.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "autograd/common.h"
#include "autograd/input_edges.h"

namespace fastopt::autograd {
namespace {

using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;

const auto& fwd_op() {
  static const auto op = op_handle<Tensor4(const Tensor&, const OptTensor&, const OptTensor&, double,
                                           const OptTensor&, const OptTensor&, double)>(
      "fastopt::batch_norm_fwd");
  return op;
}
const auto& bwd_op() {
  static const auto op =
      op_handle<Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>(
          "fastopt::batch_norm_bwd");
  return op;
}
const auto& apply_op() {
  static const auto op = op_handle<Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                          const OptTensor&)>("fastopt::batch_norm_apply");
  return op;
}
const auto& bwd_reduce_op() {
  static const auto op =
      op_handle<Tensor2(const Tensor&, const Tensor&, const Tensor&)>("fastopt::batch_norm_bwd_reduce");
  return op;
}

// grad_weight = sum dy * (x - mean) * invstd and grad_bias = sum dy, in the
// weight's dtype, each only where wanted; from the reduction pass alone (no dx).
std::tuple<Tensor, Tensor> param_grads(bool want_weight, bool want_bias, const Tensor& grad_y,
                                       const Tensor& x, const Tensor& mean, const Tensor& invstd,
                                       const Tensor& weight) {
  if (!want_weight && !want_bias) return {};
  auto [sum_dy, sum_dy_xmu] = bwd_reduce_op().call(grad_y, x, mean);
  const auto dtype = weight.defined() ? weight.scalar_type() : sum_dy.scalar_type();
  return {want_weight ? (sum_dy_xmu * invstd).to(dtype) : Tensor(),
          want_bias ? sum_dy.to(dtype) : Tensor()};
}

// Training: y from the batch's statistics, through which dx flows. mean,
// invstd and var carry no gradient and go to *stats (NOTE: [one
// differentiable output]). The op also updates the running estimates,
// buffers that get no gradient either.
struct BatchNormTrain : torch::autograd::Function<BatchNormTrain> {
  static constexpr size_t kArgs = 8;  // forward's arguments after ctx

  // The op below the autograd key, with the running estimates' update
  // counted: below ADInplaceOrView nothing counted it as a modification, and
  // a graph that saved a buffer before it must see the change.
  static Tensor4 run(const Tensor& x, const OptTensor& weight, const OptTensor& bias, double eps,
                     const OptTensor& running_mean, const OptTensor& running_var, double momentum) {
    Tensor4 out;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      out = fwd_op().call(x, weight, bias, eps, running_mean, running_var, momentum);
    }
    for (const OptTensor& running : {running_mean, running_var}) {
      if (running.has_value() && running->defined()) torch::autograd::impl::bump_version(*running);
    }
    return out;
  }

  static Tensor forward(AutogradContext* ctx, const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                        double eps, const OptTensor& running_mean, const OptTensor& running_var,
                        double momentum, Stats* stats) {
    auto [y, mean, invstd, var] = run(x, weight, bias, eps, running_mean, running_var, momentum);
    // Only x and the [C] statistics; weight and bias are the module's
    // parameters (bias only for the double backward's recomputation).
    ctx->save_for_backward({x, mean, invstd, weight.value_or(Tensor()), bias.value_or(Tensor())});
    ctx->saved_data["eps"] = eps;
    *stats = {mean, invstd, var};
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();  // first: NOTE: [unpack before going below autograd]
    const BackwardDispatch dispatch;  // NOTE: [backward below autograd]
    const Tensor &x = saved[0], &mean = saved[1], &invstd = saved[2], &weight = saved[3], &bias = saved[4];
    const InputEdges edges({x, optional_of(weight), optional_of(bias)});
    const bool want_weight = edges.needs_grad(ctx, 1), want_bias = edges.needs_grad(ctx, 2);
    if (building_backward_graph()) {  // NOTE: [double backward] in autograd/common.h
      const Tensor y = at::batch_norm(x, optional_of(weight), optional_of(bias), /*running_mean=*/{},
                                      /*running_var=*/{}, /*training=*/true, /*momentum=*/0.0,
                                      ctx->saved_data["eps"].toDouble(), /*cudnn_enabled=*/false);
      const variable_list g = differentiable_grads(
          y, grads[0], {{x, edges.needs_grad(ctx, 0)}, {weight, want_weight}, {bias, want_bias}});
      return input_grads(kArgs, {g[0], g[1], g[2]});
    }
    if (edges.needs_grad(ctx, 0)) {
      auto [dx, dw, db] = bwd_op().call(grads[0], x, mean, invstd, optional_of(weight));
      return input_grads(kArgs, {dx, want_weight ? dw : Tensor(), want_bias ? db : Tensor()});
    }
    // No dx wanted (a frozen input, e.g. the first layer): the reduction pass only.
    auto [dw, db] = param_grads(want_weight, want_bias, grads[0], x, mean, invstd, weight);
    return input_grads(kArgs, {Tensor(), dw, db});
  }
};

// Evaluation: y = (x - mean) * invstd * weight + bias with the running
// statistics held fixed (buffers without gradients), so dx = dy * invstd *
// weight: the same affine map applied to dy, with a zero mean.
struct BatchNormEval : torch::autograd::Function<BatchNormEval> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                        const OptTensor& weight, const OptTensor& bias) {
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      y = apply_op().call(x, mean, invstd, weight, bias);
    }
    // x only where a parameter gradient needs its reduction. (Not
    // needs_input_grad: forward also runs where no input requires grad, and
    // then the node has no edges to ask.)
    auto requires_grad = [](const OptTensor& t) { return t.has_value() && t->requires_grad(); };
    const bool params = requires_grad(weight) || requires_grad(bias);
    // bias only to tell, in backward, whether there was one (InputEdges).
    ctx->save_for_backward({params ? x : Tensor(), mean, invstd, weight.value_or(Tensor()), bias.value_or(Tensor())});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();  // first: NOTE: [unpack before going below autograd]
    const BackwardDispatch dispatch;  // NOTE: [backward below autograd]
    const Tensor &x = saved[0], &mean = saved[1], &invstd = saved[2], &weight = saved[3], &bias = saved[4];
    const auto edges = InputEdges::present({true, true, true, weight.defined(), bias.defined()});
    Tensor dx;
    if (edges.needs_grad(ctx, 0)) {
      dx = apply_op().call(grads[0], at::zeros_like(mean), invstd, optional_of(weight), c10::nullopt);
    }
    const bool want_weight = edges.needs_grad(ctx, 3), want_bias = edges.needs_grad(ctx, 4);
    if (building_backward_graph()) {  // NOTE: [double backward] in autograd/common.h
      // dx above is already differentiable (apply_op is this Function again);
      // the parameter gradients come from torch's ops instead of the fused
      // reduction, which has no derivative.
      auto [dw, db] = differentiable_param_grads(want_weight, want_bias, grads[0], x, mean, invstd, weight);
      return {dx, Tensor(), Tensor(), dw, db};
    }
    auto [dw, db] = param_grads(want_weight, want_bias, grads[0], x, mean, invstd, weight);
    return {dx, Tensor(), Tensor(), dw, db};
  }

  // sum dy * (x - mean) * invstd and sum dy over every dimension but the
  // channels', in the arithmetic type, with torch's differentiable ops.
  static std::tuple<Tensor, Tensor> differentiable_param_grads(bool want_weight, bool want_bias,
                                                               const Tensor& grad_y, const Tensor& x,
                                                               const Tensor& mean, const Tensor& invstd,
                                                               const Tensor& weight) {
    // x was saved only if a parameter required grad; without one it is undefined here.
    if (!want_weight && !want_bias) return {Tensor(), Tensor()};
    const auto opmath = at::toOpMathType(x.scalar_type());
    const std::vector<int64_t> shape = channel_shape(x);
    std::vector<int64_t> dims;  // every dimension but the channels'
    for (int64_t d = 0; d < x.dim(); ++d) {
      if (d != 1) dims.push_back(d);
    }
    const Tensor dy = grad_y.to(opmath);
    const auto dtype = weight.defined() ? weight.scalar_type() : opmath;
    Tensor dw, db;
    if (want_weight) {
      const Tensor xhat = (x.to(opmath) - mean.to(opmath).reshape(shape)) * invstd.to(opmath).reshape(shape);
      dw = (dy * xhat).sum(dims).to(dtype);
    }
    if (want_bias) db = dy.sum(dims).to(dtype);
    return {dw, db};
  }
};

Tensor4 batch_norm_fwd_autograd(const Tensor& x, const OptTensor& weight, const OptTensor& bias, double eps,
                                const OptTensor& running_mean, const OptTensor& running_var, double momentum) {
  // NOTE: [forward without history] in autograd/common.h, here and in batch_norm_apply_autograd.
  if (!any_records_history(x, weight, bias, running_mean, running_var)) {
    return BatchNormTrain::run(x, weight, bias, eps, running_mean, running_var, momentum);
  }
  Stats stats;
  Tensor y = BatchNormTrain::apply(x, weight, bias, eps, running_mean, running_var, momentum, &stats);
  return {std::move(y), std::move(stats[0]), std::move(stats[1]), std::move(stats[2])};
}

Tensor batch_norm_apply_autograd(const Tensor& x, const Tensor& mean, const Tensor& invstd,
                                 const OptTensor& weight, const OptTensor& bias) {
  if (!any_records_history(x, mean, invstd, weight, bias)) {
    return below_autograd(apply_op(), x, mean, invstd, weight, bias);
  }
  return BatchNormEval::apply(x, mean, invstd, weight, bias);
}

// fastopt::batch_norm_eval, the composite of evaluation mode (see its schema).
Tensor batch_norm_eval(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                       const OptTensor& weight, const OptTensor& bias, double eps) {
  const Tensor invstd = at::rsqrt(running_var.to(at::toOpMathType(x.scalar_type())) + eps);
  return apply_op().call(x, running_mean, invstd, weight, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, Autograd, m) {
  m.impl("batch_norm_fwd", &batch_norm_fwd_autograd);
  m.impl("batch_norm_apply", &batch_norm_apply_autograd);
}

TORCH_LIBRARY_IMPL(fastopt, CompositeImplicitAutograd, m) { m.impl("batch_norm_eval", &batch_norm_eval); }

}  // namespace fastopt::autograd
