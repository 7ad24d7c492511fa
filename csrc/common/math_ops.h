// Elementary operations shared by every optimizer's per-element math.
//
// Torch-free, like the *_math.h headers that use it: T is float or double on
// both backends, and at::vec::Vectorized<float|double> on the CPU, whose
// specialisation lives in csrc/cpu/kernels/vec_io.h next to the SIMD code.
#pragma once

#include <cmath>

#include "macros.h"

namespace fastopt {

// sqrt, NaN-propagating max and multiply-add for scalar T.
template <typename T>
struct MathOps {
  static FASTOPT_HOST_DEVICE FASTOPT_INLINE T sqrt(T x) { return ::sqrt(x); }
  // torch.maximum propagates NaN; fmax would silently drop it.
  static FASTOPT_HOST_DEVICE FASTOPT_INLINE T max(T a, T b) {
    return (a != a || a > b) ? a : b;
  }
  // a * b + c. ATen's SIMD kernels fuse this (at::vec::fmadd) where its
  // scalar code writes it out; for scalars we write it out too and leave the
  // contraction to the compiler, as ATen does (nvcc contracts by default).
  static FASTOPT_HOST_DEVICE FASTOPT_INLINE T fmadd(T a, T b, T c) { return a * b + c; }
};

template <>
struct MathOps<float> {
  static FASTOPT_HOST_DEVICE FASTOPT_INLINE float sqrt(float x) { return ::sqrtf(x); }
  static FASTOPT_HOST_DEVICE FASTOPT_INLINE float max(float a, float b) {
    return (a != a || a > b) ? a : b;
  }
  static FASTOPT_HOST_DEVICE FASTOPT_INLINE float fmadd(float a, float b, float c) {
    return a * b + c;
  }
};

// A lerp weight, rounded to the arithmetic type S once on the host, as ATen
// rounds a Python scalar weight to the tensor's opmath type.
template <typename S>
struct LerpWeight {
  S weight;
  S weight_minus_one;
  // ATen's lerp switches formula at |weight| = 0.5 so that both ends are exact.
  bool small;
};

template <typename S>
FASTOPT_HOST_DEVICE inline LerpWeight<S> make_lerp_weight(double weight) {
  const S w = static_cast<S>(weight);
  return LerpWeight<S>{w, w - S(1), (w < S(0) ? -w : w) < S(0.5)};
}

// The same weight broadcast to the compute type T (a no-op for scalar T).
template <typename T>
struct LerpCoeffs {
  T weight;
  T weight_minus_one;
  bool small;

  template <typename S>
  FASTOPT_HOST_DEVICE explicit LerpCoeffs(const LerpWeight<S>& w)
      : weight(w.weight), weight_minus_one(w.weight_minus_one), small(w.small) {}
};

// torch.lerp(start, end, weight) with ATen's rounding: its SIMD kernel
// (lerp_vec) computes fmadd(weight, end - start, start) for small weights and
// fmadd(weight - 1, end - start, end) otherwise.
template <typename T>
FASTOPT_HOST_DEVICE FASTOPT_INLINE T lerp(T start, T end, const LerpCoeffs<T>& w) {
  const T diff = end - start;
  return w.small ? MathOps<T>::fmadd(w.weight, diff, start)
                 : MathOps<T>::fmadd(w.weight_minus_one, diff, end);
}

}  // namespace fastopt
