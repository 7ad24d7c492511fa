// The SGD update for one element (or one SIMD vector of elements).
//
// Torch-free, like adam_math.h: the CPU kernels instantiate it with T = float,
// double or at::vec::Vectorized<float|double>, the CUDA kernels with float or
// double, so every backend runs the same arithmetic in the same order.
#pragma once

#include "macros.h"

namespace fastopt {

// The hyperparameters of one SGD step in the compute type T. They are made in
// double (make_sgd_coeffs) and converted once, which rounds each to T as torch
// rounds its Python-float `alpha`s to the tensor's dtype.
template <typename T>
struct SgdCoeffs {
  T lr;
  T momentum;
  T one_minus_dampening;  // torch's alpha=1 - dampening, rounded once from double
  T weight_decay;

  SgdCoeffs() = default;

  template <typename U>
  FASTOPT_HOST_DEVICE explicit SgdCoeffs(const SgdCoeffs<U>& c)
      : lr(c.lr),
        momentum(c.momentum),
        one_minus_dampening(c.one_minus_dampening),
        weight_decay(c.weight_decay) {}
};

FASTOPT_HOST_DEVICE inline SgdCoeffs<double> make_sgd_coeffs(double lr, double momentum,
                                                             double dampening,
                                                             double weight_decay) {
  SgdCoeffs<double> c;
  c.lr = lr;
  c.momentum = momentum;
  c.one_minus_dampening = 1.0 - dampening;
  c.weight_decay = weight_decay;
  return c;
}

// What stays fixed for one op call.
struct SgdOptions {
  bool maximize;
  bool has_weight_decay;
  bool nesterov;
  // The momentum buffer holds no history yet: it becomes the gradient itself,
  // as torch's `buf = torch.clone(grad).detach()` on a tensor's first step.
  bool first_step;
};

// One SGD update, following torch.optim.SGD's single-tensor path:
//   g = maximize ? -grad : grad;   g += wd * p
//   buf = first_step ? g : momentum * buf + (1 - dampening) * g
//   g = nesterov ? g + momentum * buf : buf
//   p -= lr * g
// `momentum_buffer` is null when momentum is 0.
template <typename T>
FASTOPT_HOST_DEVICE FASTOPT_INLINE void sgd_update(T& param, T grad, T* momentum_buffer,
                                                   const SgdCoeffs<T>& c, const SgdOptions& o) {
  if (o.maximize) grad = T(0) - grad;
  if (o.has_weight_decay) grad = grad + c.weight_decay * param;
  if (momentum_buffer != nullptr) {
    T& buf = *momentum_buffer;
    // torch: buf.mul_(momentum).add_(grad, alpha=1 - dampening)
    buf = o.first_step ? grad : buf * c.momentum + c.one_minus_dampening * grad;
    grad = o.nesterov ? grad + c.momentum * buf : buf;
  }
  // torch: param.add_(grad, alpha=-lr); negating lr is exact, so this rounds alike.
  param = param - c.lr * grad;
}

}  // namespace fastopt
