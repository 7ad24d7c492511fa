// The Adam/AdamW update for one element (or one SIMD vector of elements).
//
// This header is torch-free on purpose: the CPU kernels instantiate it with
// T = float, double or at::vec::Vectorized<float|double>, and the CUDA kernels
// with T = float or double. Every backend therefore runs the same arithmetic,
// in the same order, so CPU and CUDA results can only differ by FMA contraction.
#pragma once

#include <cmath>

#include "macros.h"
#include "math_ops.h"

namespace fastopt {

// Adam adds weight_decay * param to the gradient (L2 penalty); AdamW decays the
// parameter directly ("decoupled weight decay", Loshchilov & Hutter 2019).
enum class AdamMode : int { Adam = 0, AdamW = 1 };

// Host-side scalars of one Adam step for one tensor, in the arithmetic type
// (float for float/bf16/fp16 storage, double for float64).
template <typename S>
struct AdamScalars {
  S beta1;
  S one_minus_beta1;  // rounded once from double, as torch rounds its Python scalars
  S beta2;
  S one_minus_beta2;
  S weight_decay;
  S eps;
  S step_size;     // lr / (1 - beta1^t)
  S bc2_sqrt;      // sqrt(1 - beta2^t)
  S decay;         // 1 - lr * weight_decay, used by AdamW
  bool lerp_from_end;  // torch's lerp switches formula at weight 0.5 (see adam_update)
};

// Bias corrections for step t, computed in double as torch.optim does.
template <typename S>
FASTOPT_HOST_DEVICE inline AdamScalars<S> make_adam_scalars(double lr, double beta1, double beta2,
                                                            double weight_decay, double eps,
                                                            double step) {
  AdamScalars<S> s;
  s.beta1 = static_cast<S>(beta1);
  s.one_minus_beta1 = static_cast<S>(1.0 - beta1);
  s.beta2 = static_cast<S>(beta2);
  s.one_minus_beta2 = static_cast<S>(1.0 - beta2);
  s.weight_decay = static_cast<S>(weight_decay);
  s.eps = static_cast<S>(eps);
  s.step_size = static_cast<S>(lr / (1.0 - ::pow(beta1, step)));
  s.bc2_sqrt = static_cast<S>(::sqrt(1.0 - ::pow(beta2, step)));
  s.decay = static_cast<S>(1.0 - lr * weight_decay);
  s.lerp_from_end = (1.0 - beta1) >= 0.5;
  return s;
}

// Rounds scalars computed in double to the arithmetic type, once.
template <typename S, typename D>
FASTOPT_HOST_DEVICE inline AdamScalars<S> cast_scalars(const AdamScalars<D>& d) {
  return AdamScalars<S>{S(d.beta1),        S(d.one_minus_beta1), S(d.beta2),
                        S(d.one_minus_beta2), S(d.weight_decay),  S(d.eps),
                        S(d.step_size),    S(d.bc2_sqrt),        S(d.decay),
                        d.lerp_from_end};
}

// The same scalars broadcast to the compute type T (a no-op for scalar T).
template <typename T>
struct AdamCoeffs {
  T one_minus_beta1, beta1, beta2, one_minus_beta2, weight_decay, eps, step_size, bc2_sqrt, decay;
  bool lerp_from_end;

  template <typename S>
  FASTOPT_HOST_DEVICE explicit AdamCoeffs(const AdamScalars<S>& s)
      : one_minus_beta1(s.one_minus_beta1),
        beta1(s.beta1),
        beta2(s.beta2),
        one_minus_beta2(s.one_minus_beta2),
        weight_decay(s.weight_decay),
        eps(s.eps),
        step_size(s.step_size),
        bc2_sqrt(s.bc2_sqrt),
        decay(s.decay),
        lerp_from_end(s.lerp_from_end) {}
};

// One Adam/AdamW update, following torch.optim.Adam's single-tensor path:
//   g  = maximize ? -grad : grad;  (Adam) g += wd * p;  (AdamW) p *= 1 - lr * wd
//   m  = lerp(m, g, 1 - beta1);    v = beta2 * v + (1 - beta2) * g * g
//   vm = amsgrad ? (vmax = max(vmax, v)) : v
//   p -= step_size * m / (sqrt(vm) / sqrt(1 - beta2^t) + eps)
// `max_exp_avg_sq` is null when amsgrad is off.
template <AdamMode MODE, typename T>
FASTOPT_HOST_DEVICE FASTOPT_INLINE void adam_update(T& param, T grad, T& exp_avg, T& exp_avg_sq,
                                                    T* max_exp_avg_sq, const AdamCoeffs<T>& c,
                                                    bool maximize, bool has_weight_decay) {
  using Ops = MathOps<T>;
  if (maximize) grad = T(0) - grad;
  if (has_weight_decay) {
    if (MODE == AdamMode::AdamW) {
      param = param * c.decay;
    } else {
      grad = grad + c.weight_decay * param;
    }
  }
  // exp_avg.lerp_(grad, 1 - beta1), with ATen's two-sided formula so that it
  // rounds as torch does for every beta1, including beta1 < 0.5.
  if (c.lerp_from_end) {
    exp_avg = grad - (grad - exp_avg) * c.beta1;
  } else {
    exp_avg = exp_avg + c.one_minus_beta1 * (grad - exp_avg);
  }
  exp_avg_sq = c.beta2 * exp_avg_sq + c.one_minus_beta2 * grad * grad;
  T second = exp_avg_sq;
  if (max_exp_avg_sq != nullptr) {
    *max_exp_avg_sq = Ops::max(*max_exp_avg_sq, exp_avg_sq);
    second = *max_exp_avg_sq;
  }
  const T denom = Ops::sqrt(second) / c.bc2_sqrt + c.eps;
  param = param - c.step_size * exp_avg / denom;
}

}  // namespace fastopt
