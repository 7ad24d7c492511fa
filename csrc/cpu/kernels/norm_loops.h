// Element loops shared by the normalization kernels (group_norm_kernel.cpp,
// batch_norm_kernel.cpp): widening loads, a SIMD body and a scalar tail, and
// per-channel coefficients that are either one scalar per contiguous run or
// one value per element of a channels-last row.
//
// Included only by the per-ISA kernel translation units (see cpu/isa.h).
#pragma once

#include <ATen/cpu/vec/functional.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "cpu/kernels/vec_io.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace norm {

using at::vec::Vectorized;

// Fully unrolls a loop over a small array of SIMD registers. Without it GCC
// kept such arrays (the per-column accumulators of the channels-last
// reductions) on the stack, each add a load and a store through memory: the
// BatchNorm channels-last statistics pass ran 1.3x slower.
#define FASTOPT_UNROLL _Pragma("GCC unroll 16")

template <typename scalar_t>
struct Types {
  using IO = VecIO<scalar_t>;
  using M = typename IO::opmath_t;
  using Vec = typename IO::Vec;
  static constexpr int K = IO::kVecs;
  static constexpr int64_t kLanes = Vec::size();
};

// End of the SIMD part of a loop over n elements. The baseline build's
// Vectorized is a slow generic fallback, so there every element takes the
// scalar loop, which the compiler vectorizes with SSE2 where it can.
template <typename scalar_t>
inline int64_t vector_end(int64_t n) {
#if defined(CPU_CAPABILITY_DEFAULT)
  (void)n;
  return 0;
#else
  return n - n % VecIO<scalar_t>::kBlock;
#endif
}

// A coefficient of the elementwise math: one value for a whole run, or one
// value per element of a row (read as a vector at offset i).
template <typename M>
struct Uniform {
  M value;
  template <typename T>
  T at(int64_t) const { return T(value); }
};
template <typename M>
struct PerElement {
  const M* p;
  template <typename T>
  T at(int64_t i) const {
    if constexpr (std::is_same_v<T, M>) {
      return p[i];
    } else {
      return T::loadu(p + i);
    }
  }
};

// Asks for the cache lines of x[i] and dy[i] (dy may be null). i may lie past
// the arrays (the next unit of the last one is another thread's, or none):
// the address is formed as an integer, since a pointer beyond an array is
// undefined, and prefetching an address outside any mapping never faults.
template <typename scalar_t>
inline void prefetch_inputs(const scalar_t* x, const scalar_t* dy, int64_t i) {
  const auto at = [i](const scalar_t* p) {
    return reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) +
                                         static_cast<uintptr_t>(i) * sizeof(scalar_t));
  };
  __builtin_prefetch(at(x), 0, 2);
  if (dy != nullptr) __builtin_prefetch(at(dy), 0, 2);
}

// Calls fn(i, x_i, ...) for each element i of n, where each listed input is
// loaded and widened; `x_i` is a Vec in the SIMD part and an M in the tail.
// fn returns the value to store at out[i], when out is not null.
//
// A nonzero `ahead` also prefetches the inputs `ahead` elements past each
// SIMD block, one request per block: an elementwise pass that rereads its
// inputs from cache leaves the memory's read side idle, and this lets it
// fetch the caller's next piece of work meanwhile (see NOTE: [prefetch the
// next unit] in group_norm_kernel.cpp).
template <typename scalar_t, typename Fn>
inline void map_elements(const scalar_t* x, const scalar_t* dy, scalar_t* out, int64_t n,
                         const Fn& fn, int64_t ahead = 0) {
  using T = Types<scalar_t>;
  using Vec = typename T::Vec;
  const int64_t end = vector_end<scalar_t>(n);
  int64_t i = 0;
  for (; i < end; i += T::IO::kBlock) {
    if (ahead != 0) prefetch_inputs(x, dy, i + ahead);
    Vec xv[T::K], dv[T::K], r[T::K];
    T::IO::load(x + i, xv);
    if (dy != nullptr) T::IO::load(dy + i, dv);
    for (int k = 0; k < T::K; ++k) r[k] = fn(i + k * T::kLanes, xv[k], dy != nullptr ? dv[k] : Vec(0));
    if (out != nullptr) T::IO::store(out + i, r);
  }
  using M = typename T::M;
  for (; i < n; ++i) {
    const M r = fn(i, static_cast<M>(x[i]), dy != nullptr ? static_cast<M>(dy[i]) : M(0));
    if (out != nullptr) out[i] = static_cast<scalar_t>(r);
  }
}

// ---------------------------------------------------------------- streaming
// map_elements with non-temporal stores for the aligned SIMD body of a run
// (float and double; other types and the baseline build store normally; see
// stream_store in vec_io.h).
// fn sees indices relative to the run's start, as with map_elements.
template <typename scalar_t, typename Fn>
void map_streaming(const scalar_t* x, const scalar_t* dy, scalar_t* out, int64_t n, const Fn& fn,
                   int64_t ahead = 0) {
#if defined(FASTOPT_STREAM_STORES)
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    using Vec = Vectorized<scalar_t>;
    constexpr int64_t kLanes = Vec::size();
    constexpr uintptr_t kAlign = sizeof(Vec);
    const uintptr_t addr = reinterpret_cast<uintptr_t>(out);
    // Elements before the first vector-aligned output address.
    const int64_t head = std::min<int64_t>(
        n, addr % sizeof(scalar_t) != 0 ? n : (kAlign - addr % kAlign) % kAlign / sizeof(scalar_t));
    map_elements<scalar_t>(x, dy, out, head, fn, ahead);
    int64_t i = head;
    for (; i + kLanes <= n; i += kLanes) {
      if (ahead != 0) prefetch_inputs(x, dy, i + ahead);
      const Vec g = dy != nullptr ? Vec::loadu(dy + i) : Vec(0);
      stream_store(out + i, fn(i, Vec::loadu(x + i), g));
    }
    const int64_t off = i;
    map_elements<scalar_t>(x + off, dy != nullptr ? dy + off : nullptr, out + off, n - off,
                           [&](int64_t j, auto v, auto g) { return fn(j + off, v, g); });
    return;
  }
#endif
  map_elements<scalar_t>(x, dy, out, n, fn, ahead);
}

// Runs map_streaming or map_elements.
template <typename scalar_t, typename Fn>
inline void map_run(bool stream, const scalar_t* x, const scalar_t* dy, scalar_t* out, int64_t n,
                    const Fn& fn, int64_t ahead = 0) {
  if (stream) {
    map_streaming<scalar_t>(x, dy, out, n, fn, ahead);
  } else {
    map_elements<scalar_t>(x, dy, out, n, fn, ahead);
  }
}

// Sums over a run of n elements: R sums of the summands fn(i, x_i, dy_i)
// returns (an std::array<T, R>, T a Vec in the SIMD part and an M in the
// tail; dy may be null, as in map_elements). fn may also have side effects.
//
// The SIMD part cycles through kChains independent accumulators. With a
// single one every add waits for the previous add's result (3-4 cycles),
// and a pass over a run already in L1 is bound by that chain: LayerNorm's
// second moment pass took over half of its forward's time at C = 768.
// Changing kChains changes the order of the additions, and so the last bits.
constexpr int kChains = 4;

template <int R, typename scalar_t, typename Fn>
inline std::array<typename Types<scalar_t>::M, R> sum_elements(const scalar_t* x, const scalar_t* dy,
                                                               int64_t n, const Fn& fn) {
  using T = Types<scalar_t>;
  using M = typename T::M;
  using Vec = typename T::Vec;
  constexpr int64_t kStep = T::IO::kBlock;
  Vec acc[kChains][R];
  FASTOPT_UNROLL
  for (int c = 0; c < kChains; ++c) {
    FASTOPT_UNROLL
    for (int r = 0; r < R; ++r) acc[c][r] = Vec(M(0));
  }
  // One storage block's summands into chain c.
  auto add_block = [&](int64_t i, int c) {
    Vec xv[T::K], dv[T::K];
    T::IO::load(x + i, xv);
    if (dy != nullptr) T::IO::load(dy + i, dv);
    FASTOPT_UNROLL
    for (int k = 0; k < T::K; ++k) {
      const std::array<Vec, R> u = fn(i + k * T::kLanes, xv[k], dy != nullptr ? dv[k] : Vec(0));
      FASTOPT_UNROLL
      for (int r = 0; r < R; ++r) acc[c][r] = acc[c][r] + u[r];
    }
  };
  const int64_t end = vector_end<scalar_t>(n);
  int64_t i = 0;
  for (; i + kChains * kStep <= end; i += kChains * kStep) {
    FASTOPT_UNROLL
    for (int c = 0; c < kChains; ++c) add_block(i + c * kStep, c);
  }
  for (; i < end; i += kStep) add_block(i, 0);
  // The scalar part sums in double: it is a short tail after the SIMD part,
  // but in the baseline build it is the whole run, and a single float chain
  // over tens of thousands of values lost digits that the SIMD builds' many
  // accumulators keep (GroupNorm over 73728-value groups: 4e-5 off torch).
  std::array<double, R> tail{};
  for (; i < n; ++i) {
    const std::array<M, R> u = fn(i, static_cast<M>(x[i]), dy != nullptr ? static_cast<M>(dy[i]) : M(0));
    for (int r = 0; r < R; ++r) tail[r] += static_cast<double>(u[r]);
  }
  std::array<M, R> total{};
  const auto add = [](Vec a, Vec b) { return a + b; };
  FASTOPT_UNROLL
  for (int r = 0; r < R; ++r) {
    static_assert(kChains == 4, "the pairwise sum below names four chains");
    const M simd = at::vec::vec_reduce_all(add, (acc[0][r] + acc[1][r]) + (acc[2][r] + acc[3][r]));
    total[r] = static_cast<M>(tail[r] + static_cast<double>(simd));
  }
  return total;
}

}  // namespace norm
}  // namespace CPU_CAPABILITY
}  // namespace fastopt::cpu
