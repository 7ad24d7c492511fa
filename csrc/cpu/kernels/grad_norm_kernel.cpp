// The grad_norm reduction kernel. Compiled once per instruction set (see
// cpu/isa.h); nothing here throws (see cpu/kernels/elementwise.h).
#include "cpu/kernels/grad_norm_kernel.h"

#include <ATen/cpu/vec/functional.h>

#include <cmath>
#include <limits>

#include "cpu/kernels/elementwise.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// |x|, min, x != 0 and x^p for scalars and SIMD vectors alike.
template <typename S>
inline S abs_of(S x) { return std::abs(x); }
template <typename S>
inline at::vec::Vectorized<S> abs_of(const at::vec::Vectorized<S>& x) { return x.abs(); }
template <typename S>
inline S min_of(S a, S b) { return (a != a || a < b) ? a : b; }
template <typename S>
inline at::vec::Vectorized<S> min_of(const at::vec::Vectorized<S>& a,
                                     const at::vec::Vectorized<S>& b) {
  return at::vec::minimum(a, b);
}
template <typename S>
inline S nonzero(S x) { return x != S(0) ? S(1) : S(0); }
template <typename S>
inline at::vec::Vectorized<S> nonzero(const at::vec::Vectorized<S>& x) {
  return x.ne(at::vec::Vectorized<S>(S(0)));  // 1 where x != 0, else 0
}
template <typename S>
inline S pow_of(S x, S p) { return std::pow(x, p); }
template <typename S>
inline at::vec::Vectorized<S> pow_of(const at::vec::Vectorized<S>& x,
                                     const at::vec::Vectorized<S>& p) {
  return x.pow(p);
}

// One reduction step of `kind` on a vector or scalar of |x| (or x).
template <NormKind KIND, typename T>
inline T accumulate(T acc, T x, T p) {
  using Ops = MathOps<T>;
  if constexpr (KIND == NormKind::Two) {
    return Ops::fmadd(x, x, acc);
  } else if constexpr (KIND == NormKind::One) {
    return acc + abs_of(x);
  } else if constexpr (KIND == NormKind::Inf) {
    return Ops::max(acc, abs_of(x));
  } else if constexpr (KIND == NormKind::NegInf) {
    return min_of(acc, abs_of(x));
  } else if constexpr (KIND == NormKind::Zero) {
    return acc + nonzero(x);
  } else {
    return acc + pow_of(abs_of(x), p);
  }
}

template <NormKind KIND>
constexpr double identity() {
  return KIND == NormKind::NegInf ? std::numeric_limits<double>::infinity() : 0.0;
}

template <NormKind KIND>
inline double combine(double a, double b) {
  // NaN wins, as in torch's max/min reductions.
  if constexpr (KIND == NormKind::Inf) {
    return (std::isnan(a) || std::isnan(b)) ? std::numeric_limits<double>::quiet_NaN()
                                            : std::max(a, b);
  } else if constexpr (KIND == NormKind::NegInf) {
    return (std::isnan(a) || std::isnan(b)) ? std::numeric_limits<double>::quiet_NaN()
                                            : std::min(a, b);
  } else {
    return a + b;
  }
}

template <typename scalar_t, NormKind KIND>
void reduce(const scalar_t* x, int64_t n, double p, NormPartial* out) {
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using Vec = typename IO::Vec;
  constexpr int K = IO::kVecs;
#if defined(CPU_CAPABILITY_DEFAULT)
  const int64_t vector_end = 0;  // see for_each_element_impl
#else
  const int64_t vector_end = n - n % IO::kBlock;
#endif
  const opmath_t init = static_cast<opmath_t>(identity<KIND>());
  Vec acc[K], check[K];
  for (int k = 0; k < K; ++k) {
    acc[k] = Vec(init);
    check[k] = Vec(0);
  }
  const Vec vp(static_cast<opmath_t>(p));
  int64_t i = 0;
  for (; i < vector_end; i += IO::kBlock) {
    Vec v[K];
    IO::load(x + i, v);
    for (int k = 0; k < K; ++k) {
      acc[k] = accumulate<KIND>(acc[k], v[k], vp);
      check[k] = check[k] + (v[k] - v[k]);
    }
  }
  double value = identity<KIND>();
  double chk = 0.0;
  for (int k = 0; k < K; ++k) {
    if (vector_end == 0) break;
    const opmath_t lanes = at::vec::vec_reduce_all(
        [](Vec a, Vec b) {
          if constexpr (KIND == NormKind::Inf) {
            return at::vec::maximum(a, b);
          } else if constexpr (KIND == NormKind::NegInf) {
            return at::vec::minimum(a, b);
          } else {
            return a + b;
          }
        },
        acc[k]);
    value = combine<KIND>(value, static_cast<double>(lanes));
    chk += static_cast<double>(
        at::vec::vec_reduce_all([](Vec a, Vec b) { return a + b; }, check[k]));
  }
  opmath_t tail = init;
  const opmath_t sp = static_cast<opmath_t>(p);
  for (; i < n; ++i) {
    const opmath_t v = static_cast<opmath_t>(x[i]);
    tail = accumulate<KIND>(tail, v, sp);
    chk += static_cast<double>(v - v);
  }
  out->value = combine<KIND>(value, static_cast<double>(tail));
  out->check = chk;
}

template <typename scalar_t>
void reduce_kind(NormKind kind, double p, const void* data, int64_t n, NormPartial* out) {
  const auto* x = static_cast<const scalar_t*>(data);
  switch (kind) {
    case NormKind::Two: return reduce<scalar_t, NormKind::Two>(x, n, p, out);
    case NormKind::One: return reduce<scalar_t, NormKind::One>(x, n, p, out);
    case NormKind::Inf: return reduce<scalar_t, NormKind::Inf>(x, n, p, out);
    case NormKind::NegInf: return reduce<scalar_t, NormKind::NegInf>(x, n, p, out);
    case NormKind::Zero: return reduce<scalar_t, NormKind::Zero>(x, n, p, out);
    case NormKind::P: return reduce<scalar_t, NormKind::P>(x, n, p, out);
  }
}

void grad_norm_kernel_impl(c10::ScalarType dtype, NormKind kind, double p, const void* data,
                           int64_t n, NormPartial* out) {
  dispatch_storage_type(dtype, [&](auto storage) {
    reduce_kind<typename decltype(storage)::type>(kind, p, data, n, out);
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

GradNormKernelFn const FASTOPT_ISA_SYMBOL(grad_norm_kernel) = &CPU_CAPABILITY::grad_norm_kernel_impl;

}  // namespace fastopt::cpu
