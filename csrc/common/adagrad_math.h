// The Adagrad update for one element (or one SIMD vector of elements).
//
// Torch-free, like adam_math.h: the CPU kernels instantiate it with T = float,
// double or at::vec::Vectorized<float|double>, the CUDA kernels with float or
// double, so every backend runs the same arithmetic in the same order.
#pragma once

#include "macros.h"
#include "math_ops.h"

namespace fastopt {

// The scalars of one Adagrad step for one tensor in the compute type T, made in
// double (make_adagrad_coeffs) and rounded once, as torch rounds its Python
// floats to the tensor's dtype.
template <typename T>
struct AdagradCoeffs {
  T clr;  // lr / (1 + (step - 1) * lr_decay)
  T weight_decay;
  T eps;

  AdagradCoeffs() = default;

  template <typename U>
  FASTOPT_HOST_DEVICE explicit AdagradCoeffs(const AdagradCoeffs<U>& c)
      : clr(c.clr), weight_decay(c.weight_decay), eps(c.eps) {}
};

// `step` is the tensor's counter after this step's increment (1 on the first
// step). The decayed lr is computed in double, as torch.optim does in Python.
FASTOPT_HOST_DEVICE inline AdagradCoeffs<double> make_adagrad_coeffs(double lr, double lr_decay,
                                                                     double weight_decay,
                                                                     double eps, double step) {
  AdagradCoeffs<double> c;
  c.clr = lr / (1.0 + (step - 1.0) * lr_decay);
  c.weight_decay = weight_decay;
  c.eps = eps;
  return c;
}

// One Adagrad update, following torch.optim.Adagrad's single-tensor path:
//   g = maximize ? -grad : grad;   g += wd * p
//   sum += g * g
//   p -= clr * g / (sqrt(sum) + eps)
template <typename T>
FASTOPT_HOST_DEVICE FASTOPT_INLINE void adagrad_update(T& param, T grad, T& sum,
                                                       const AdagradCoeffs<T>& c, bool maximize,
                                                       bool has_weight_decay) {
  if (maximize) grad = T(0) - grad;
  if (has_weight_decay) grad = grad + c.weight_decay * param;
  sum = sum + grad * grad;  // state_sum.addcmul_(grad, grad, value=1)
  const T std = MathOps<T>::sqrt(sum) + c.eps;
  // param.addcdiv_(grad, std, value=-clr), which ATen evaluates as
  // param + (-clr * grad) / std; negating clr is exact, so this rounds alike.
  param = param - c.clr * grad / std;
}

}  // namespace fastopt
