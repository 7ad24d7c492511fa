// The reductions behind a p-norm, shared by the CPU and CUDA grad_norm kernels.
// Torch-free.
#pragma once

namespace fastopt {

// Sum of x^2 (p = 2), sum of |x| (p = 1), max |x| (inf), min |x| (-inf),
// count of x != 0 (p = 0), or sum of |x|^p for any other p.
enum class NormKind : int { Two = 0, One, Inf, NegInf, Zero, P };

inline NormKind norm_kind(double p) {
  if (p == 2.0) return NormKind::Two;
  if (p == 1.0) return NormKind::One;
  if (p > 1e308) return NormKind::Inf;
  if (p < -1e308) return NormKind::NegInf;
  if (p == 0.0) return NormKind::Zero;
  return NormKind::P;
}

}  // namespace fastopt
