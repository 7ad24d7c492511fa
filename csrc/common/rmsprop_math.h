// The RMSprop update for one element (or one SIMD vector of elements).
//
// Torch-free, like adam_math.h: the CPU kernels instantiate it with T = float,
// double or at::vec::Vectorized<float|double>, the CUDA kernels with T = float
// or double, so both backends run the same arithmetic in the same order.
#pragma once

#include "macros.h"
#include "math_ops.h"

namespace fastopt {

// Host-side scalars of one RMSprop step, in the arithmetic type S (float for
// float/bf16/fp16 storage, double for float64). Each is rounded once from the
// double the user gave, as torch rounds the Python scalars of its tensor ops.
template <typename S>
struct RMSpropScalars {
  S alpha;
  S one_minus_alpha;  // 1 - alpha in double, then rounded: torch's addcmul value
  LerpWeight<S> grad_avg_weight;  // grad_avg.lerp_(grad, 1 - alpha)
  S eps;
  S weight_decay;
  S momentum;
  S neg_lr;
};

template <typename S>
FASTOPT_HOST_DEVICE inline RMSpropScalars<S> make_rmsprop_scalars(double lr, double alpha,
                                                                  double eps, double weight_decay,
                                                                  double momentum) {
  return RMSpropScalars<S>{S(alpha),  S(1.0 - alpha),      make_lerp_weight<S>(1.0 - alpha),
                           S(eps),    S(weight_decay),     S(momentum),
                           S(-lr)};
}

// The same scalars broadcast to the compute type T (a no-op for scalar T).
template <typename T>
struct RMSpropCoeffs {
  T alpha, one_minus_alpha;
  LerpCoeffs<T> grad_avg_weight;
  T eps, weight_decay, momentum, neg_lr;

  template <typename S>
  FASTOPT_HOST_DEVICE explicit RMSpropCoeffs(const RMSpropScalars<S>& s)
      : alpha(s.alpha),
        one_minus_alpha(s.one_minus_alpha),
        grad_avg_weight(s.grad_avg_weight),
        eps(s.eps),
        weight_decay(s.weight_decay),
        momentum(s.momentum),
        neg_lr(s.neg_lr) {}
};

// One RMSprop update, following torch.optim.RMSprop's single-tensor path op
// by op, so that each intermediate is rounded where torch rounds it:
//   g   = maximize ? -grad : grad;   g = g + wd * p       (grad.add(p, alpha=wd))
//   v   = alpha * v;  v = v + (1 - alpha) * g * g          (mul_, addcmul_)
//   centered:  ga = lerp(ga, g, 1 - alpha);  avg = sqrt(v - ga * ga) + eps
//   otherwise: avg = sqrt(v) + eps
//   momentum:  buf = momentum * buf;  buf = buf + g / avg;  p = p - lr * buf
//   otherwise: p = p + (-lr * g) / avg                     (addcdiv_(value=-lr))
// Where ATen's SIMD kernels fuse a multiply-add (add with alpha, addcmul) so
// do we, through MathOps::fmadd, so that the SIMD body of the CPU kernel
// rounds as torch does (scalar tails may differ by contraction).
// `grad_avg` is null unless CENTERED, `momentum_buffer` null unless MOMENTUM.
template <bool CENTERED, bool MOMENTUM, typename T>
FASTOPT_HOST_DEVICE FASTOPT_INLINE void rmsprop_update(T& param, T grad, T& square_avg,
                                                       T* grad_avg, T* momentum_buffer,
                                                       const RMSpropCoeffs<T>& c, bool maximize,
                                                       bool has_weight_decay) {
  using Ops = MathOps<T>;
  if (maximize) grad = T(0) - grad;
  if (has_weight_decay) grad = Ops::fmadd(param, c.weight_decay, grad);
  square_avg = square_avg * c.alpha;
  square_avg = Ops::fmadd(c.one_minus_alpha * grad, grad, square_avg);
  T avg;
  if constexpr (CENTERED) {
    *grad_avg = lerp(*grad_avg, grad, c.grad_avg_weight);
    // square_avg.addcmul(grad_avg, grad_avg, value=-1)
    avg = Ops::sqrt(Ops::fmadd(T(0) - *grad_avg, *grad_avg, square_avg)) + c.eps;
  } else {
    avg = Ops::sqrt(square_avg) + c.eps;
  }
  if constexpr (MOMENTUM) {
    *momentum_buffer = *momentum_buffer * c.momentum;
    *momentum_buffer = *momentum_buffer + grad / avg;
    param = Ops::fmadd(*momentum_buffer, c.neg_lr, param);
  } else {
    param = param + c.neg_lr * grad / avg;
  }
}

}  // namespace fastopt
