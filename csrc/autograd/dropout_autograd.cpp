// Autograd of the dropout ops (see csrc/autograd/batch_norm_autograd.cpp for
// why autograd lives in C++).
//
// Backward of dropout is dropout of the gradient under the same seed: the
// mask is regenerated in the pass that computes dx, and the only tensor
// saved is the 2-word seed, never a per-element mask. In the 1-bit mode the
// bit-packed mask is saved instead and applied to the gradient.
#include <ATen/ops/sum.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "autograd/common.h"
#include "autograd/input_edges.h"

namespace fastopt::autograd {
namespace {


const auto& dropout_op() {
  static const auto op = op_handle<Tensor(const Tensor&, const Tensor&, double, c10::SymInt)>("fastopt::dropout");
  return op;
}
const auto& dropout_inplace_op() {
  static const auto op =
      op_handle<void(const Tensor&, const Tensor&, double, c10::SymInt)>("fastopt::dropout_");
  return op;
}
const auto& dropout_add_op() {
  static const auto op = op_handle<Tensor(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, double)>(
      "fastopt::dropout_add");
  return op;
}
const auto& dropout_bits_op() {
  static const auto op =
      op_handle<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, double)>("fastopt::dropout_bits");
  return op;
}
const auto& from_bits_op() {
  static const auto op =
      op_handle<Tensor(const Tensor&, const Tensor&, double)>("fastopt::dropout_from_bits");
  return op;
}

struct Dropout : torch::autograd::Function<Dropout> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& seed, double p,
                        const c10::SymInt& group) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({seed});
    ctx->saved_data["p"] = p;
    ctx->saved_data["group"] = group;
    return dropout_op().call(x, seed, p, group);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor seed = ctx->get_saved_variables()[0];  // first: NOTE: [unpack before going below autograd]
    const BackwardDispatch dispatch;  // NOTE: [backward below autograd]
    const Tensor dx =
        dropout_op().call(grads[0], seed, ctx->saved_data["p"].toDouble(), ctx->saved_data["group"].toSymInt());
    return {dx, Tensor(), Tensor(), Tensor()};
  }
};

// dropout(x + bias) + residual.
struct DropoutAdd : torch::autograd::Function<DropoutAdd> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& residual, const OptTensor& bias,
                        const Tensor& seed, double p) {
    at::AutoDispatchBelowADInplaceOrView below;
    InputEdges({x, residual, bias, seed}).save(ctx);
    ctx->save_for_backward({seed});
    ctx->saved_data["p"] = p;
    return dropout_add_op().call(x, residual, bias, seed, p);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor seed = ctx->get_saved_variables()[0];  // first: NOTE: [unpack before going below autograd]
    const BackwardDispatch dispatch;  // NOTE: [backward below autograd]
    const InputEdges edges(ctx);
    const Tensor& grad = grads[0];
    const bool want_bias = edges.needs_grad(ctx, 2);
    Tensor dx;
    if (edges.needs_grad(ctx, 0) || want_bias) dx = dropout_op().call(grad, seed, ctx->saved_data["p"].toDouble(), 1);
    // bias is broadcast over every leading dimension of x: its gradient is
    // dx summed over them.
    Tensor dbias = want_bias ? dx.reshape({-1, dx.size(-1)}).sum(0) : Tensor();
    return {edges.needs_grad(ctx, 0) ? dx : Tensor(), grad, dbias, Tensor(), Tensor()};
  }
};

// The 1-bit mode: the mask, which carries no gradient, is saved and goes to
// *bits_out (NOTE: [one differentiable output] in autograd/common.h).
struct DropoutBits : torch::autograd::Function<DropoutBits> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& seed, double p, Stats* bits_out) {
    Tensor y, bits;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(y, bits) = dropout_bits_op().call(x, seed, p);
    }
    ctx->save_for_backward({bits});
    ctx->saved_data["p"] = p;
    *bits_out = {bits};
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor bits = ctx->get_saved_variables()[0];  // first: NOTE: [unpack before going below autograd]
    const BackwardDispatch dispatch;  // NOTE: [backward below autograd]
    // x, seed, p and the out-argument: a gradient for x only.
    return input_grads(4, {from_bits_op().call(grads[0], bits, ctx->saved_data["p"].toDouble())});
  }
};

// Applying a stored mask is linear in the gradient: its backward applies it again.
struct DropoutFromBits : torch::autograd::Function<DropoutFromBits> {
  static Tensor forward(AutogradContext* ctx, const Tensor& grad, const Tensor& bits, double p) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({bits});
    ctx->saved_data["p"] = p;
    return from_bits_op().call(grad, bits, p);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor bits = ctx->get_saved_variables()[0];  // first: NOTE: [unpack before going below autograd]
    const BackwardDispatch dispatch;  // NOTE: [backward below autograd]
    return {from_bits_op().call(grads[0], bits, ctx->saved_data["p"].toDouble()), Tensor(), Tensor()};
  }
};

// group is a SymInt: under torch.compile with dynamic shapes it is the
// channel size of a symbolic shape, and an int64_t here would specialize it.
Tensor dropout_autograd(const Tensor& x, const Tensor& seed, double p, c10::SymInt group) {
  // Each kernel here: NOTE: [forward without history] in autograd/common.h.
  if (!any_records_history(x, seed)) return below_autograd(dropout_op(), x, seed, p, group);
  return Dropout::apply(x, seed, p, group);
}

// In-place dropout has no derivative of its own: fastopt.nn.functional sends a
// tensor that needs one through the out-of-place op and a copy_, which
// autograd tracks. A direct call that would need one is refused here rather
// than leaving a gradient (or a forward-mode tangent, which the autograd
// fallback does not touch) silently unscaled. The write itself is counted
// below this key (NOTE: [in-place versions]).
void dropout_inplace_autograd(c10::DispatchKeySet keys, const Tensor& x, const Tensor& seed, double p,
                              c10::SymInt group) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && x.requires_grad()),
              "fastopt.dropout_: x requires grad, and in-place dropout has no autograd formula; "
              "fastopt.nn.functional.dropout(x, p, inplace=True) differentiates it");
  TORCH_CHECK(!x._fw_grad(/*level=*/0).defined(), "fastopt.dropout_: forward-mode AD is not supported");
  dropout_inplace_op().redispatch(keys & c10::after_autograd_keyset, x, seed, p, std::move(group));
}

Tensor dropout_add_autograd(const Tensor& x, const Tensor& residual, const OptTensor& bias, const Tensor& seed,
                            double p) {
  if (!any_records_history(x, residual, bias, seed)) {
    return below_autograd(dropout_add_op(), x, residual, bias, seed, p);
  }
  return DropoutAdd::apply(x, residual, bias, seed, p);
}

std::tuple<Tensor, Tensor> dropout_bits_autograd(const Tensor& x, const Tensor& seed, double p) {
  if (!any_records_history(x, seed)) return below_autograd(dropout_bits_op(), x, seed, p);
  Stats bits;
  Tensor y = DropoutBits::apply(x, seed, p, &bits);
  return {std::move(y), std::move(bits[0])};
}

Tensor dropout_from_bits_autograd(const Tensor& grad, const Tensor& bits, double p) {
  if (!any_records_history(grad, bits)) return below_autograd(from_bits_op(), grad, bits, p);
  return DropoutFromBits::apply(grad, bits, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, Autograd, m) {
  m.impl("dropout", &dropout_autograd);
  m.impl("dropout_", &dropout_inplace_autograd);
  m.impl("dropout_add", &dropout_add_autograd);
  m.impl("dropout_bits", &dropout_bits_autograd);
  m.impl("dropout_from_bits", &dropout_from_bits_autograd);
}

}  // namespace fastopt::autograd
