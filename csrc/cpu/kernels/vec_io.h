// SIMD load/store between a storage type and its arithmetic type.
//
// Included only by the per-ISA kernel translation units, after CPU_CAPABILITY
// has selected the Vectorized implementation. float and double are computed in
// their own type; bfloat16 and float16 are widened to float (at::opmath_type),
// one storage vector becoming two float vectors.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>

#include "common/math_ops.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#define FASTOPT_STREAM_STORES 1
#endif

namespace fastopt {

// MathOps (common/math_ops.h) for SIMD vectors: fmadd is ATen's, which fuses
// where the instruction set has FMA, so that lerp rounds as ATen's lerp_vec.
template <typename T>
struct MathOps<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static inline V sqrt(const V& x) { return x.sqrt(); }
  static inline V max(const V& a, const V& b) { return at::vec::maximum(a, b); }
  static inline V fmadd(const V& a, const V& b, const V& c) { return at::vec::fmadd(a, b, c); }
};

namespace cpu {
inline namespace CPU_CAPABILITY {

template <typename scalar_t>
struct VecIO {
  using opmath_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<opmath_t>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, opmath_t>;
  // Arithmetic vectors per storage block, and elements per block.
  static constexpr int kVecs = kReduced ? 2 : 1;
  static constexpr int64_t kBlock = at::vec::Vectorized<scalar_t>::size();

  static inline void load(const scalar_t* p, Vec (&out)[kVecs]) {
    if constexpr (kReduced) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(at::vec::Vectorized<scalar_t>::loadu(p));
      out[0] = lo;
      out[1] = hi;
    } else {
      out[0] = Vec::loadu(p);
    }
  }

  // The values as they will be stored: rounded to scalar_t and widened back.
  static inline void round(Vec (&v)[kVecs]) {
    if constexpr (kReduced) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(at::vec::convert_from_float<scalar_t>(v[0], v[1]));
      v[0] = lo;
      v[1] = hi;
    }
  }

  static inline void store(scalar_t* p, const Vec (&in)[kVecs]) {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(in[0], in[1]).store(p);
    } else {
      in[0].store(p);
    }
  }
};

// Non-temporal stores, for outputs too large to stay in cache until they are
// read (see stream_output in cpu/output_cache.h): an ordinary store first
// reads the line it writes from memory, a third stream of traffic in an
// out-of-place pass. float and double vectors only, at vector-aligned p.
// The op fences once per thread after the kernels (cpu/stream_fence.h).
#if defined(FASTOPT_STREAM_STORES)
inline void stream_store(float* p, const at::vec::Vectorized<float>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  _mm512_stream_ps(p, v);
#else
  _mm256_stream_ps(p, v);
#endif
}
inline void stream_store(double* p, const at::vec::Vectorized<double>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  _mm512_stream_pd(p, v);
#else
  _mm256_stream_pd(p, v);
#endif
}
#endif

// Whether stream_store can write the vector at p.
template <typename scalar_t>
inline bool can_stream(const scalar_t* p) {
#if defined(FASTOPT_STREAM_STORES)
  constexpr bool kWide = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
  return kWide && reinterpret_cast<uintptr_t>(p) % sizeof(at::vec::Vectorized<scalar_t>) == 0;
#else
  (void)p;
  return false;
#endif
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastopt
