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

// ---------------------------------------------------------------- channels-last sums
// Per-channel sums down rows [begin, end) of a channels-last [rows, C]
// array: with d = x - center_c and u = dy (kGradient) or d,
//   sum1[c] += sum u,   sum2[c] += sum u * d   (in double).
// The statistics of BatchNorm (over N * S rows) and of GroupNorm (a sample's
// S rows, with GroupNorm's own shift), and their backwards' sums of dy and
// dy * (x - mean). `acc` is scratch for 2 * C arithmetic-type partials.
//
// Rows are taken in tiles. Within a tile each SIMD column of channels is
// summed down the rows in registers, then added once into the
// arithmetic-type partials, which go into double every kSumRows rows:
// float32 lanes summing a few hundred values keep ~1e-6 relative error.
//
// NOTE: [channels-last reduction order]
// How tall a tile is depends on whether one column pass covers a whole row:
//   * it does (C <= 64 float32, or a few more channels past the last
//     vector, which the scalar tail rereads from L1): tiles of about
//     kTileBytes (a quarter of L1, x and dy), read in memory order; loading
//     and storing the partials for every row instead made this pass twice as
//     slow as the channels-first one (BatchNorm; GroupNorm's forward+backward
//     at (32, 64, 56, 56) NHWC measured as in its commit);
//   * it does not: tiles of one row. A taller tile is read a column strip at
//     a time, that is as 2 * rows short runs of x and dy at once, and the
//     hardware prefetchers of this Zen 4 follow those poorly; one row at a
//     time is two forward streams, x and dy, and the partials it loads and
//     stores per row stay in L1. At (64, 256, 14, 14) float32 NHWC, cache
//     scrubbed, on one thread: the backward sums took 1.08-1.38 ms against
//     2.13-2.42 ms with 8-row tiles (NCHW: 0.82-1.17 ms), the statistics
//     0.86-0.97 against 1.04-1.21 ms. Tiles of 2 rows were slower still.
// Software prefetch of the next tile, 128 requests in a burst, stalled on
// full miss buffers and measured slower; prefetching a strip's rows a tile
// ahead made no difference.
constexpr int64_t kSumRows = 64;
constexpr int64_t kTileBytes = 8192;
// Arithmetic vectors per column pass: k, s1 and s2 of each, plus the loads,
// fit the 32 AVX-512 registers (8 spilled for 16-bit types, K = 2).
constexpr int kColumnVectors = 4;

template <typename scalar_t, bool kGradient>
void channel_sums_down_rows(const scalar_t* x, const scalar_t* dy,
                            const typename Types<scalar_t>::M* center, int64_t C, int64_t begin,
                            int64_t end, typename Types<scalar_t>::M* acc, double* sum1,
                            double* sum2) {
  using T = Types<scalar_t>;
  using M = typename T::M;
  using Vec = typename T::Vec;
  constexpr int K = T::K;
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(scalar_t));
  M* acc1 = acc;
  M* acc2 = acc + C;
  constexpr int kColumnBlocks = std::max(1, kColumnVectors / K);
  const int64_t vec_end = vector_end<scalar_t>(C);
  // NOTE: [channels-last reduction order]
  const bool one_pass = vec_end <= kColumnBlocks * T::IO::kBlock;
  const int64_t tile = one_pass ? std::max<int64_t>(1, std::min(kSumRows, kTileBytes / row_bytes)) : 1;
  for (int64_t r0 = begin; r0 < end; r0 += kSumRows) {
    const int64_t r1 = std::min(end, r0 + kSumRows);
    std::fill(acc1, acc1 + 2 * C, M(0));
    for (int64_t t0 = r0; t0 < r1; t0 += tile) {
      const int64_t t1 = std::min(r1, t0 + tile);
      // Up to kColumnBlocks storage blocks of channels at once: at C = 64
      // float32 that is a whole row, so the tile is read in memory order.
      auto columns = [&](auto blocks, int64_t j) {
        constexpr int W = decltype(blocks)::value * K;  // arithmetic vectors
        Vec k[W], s1[W], s2[W];
        FASTOPT_UNROLL for (int q = 0; q < W; ++q) {
          k[q] = Vec::loadu(center + j + q * T::kLanes);
          s1[q] = Vec(M(0));
          s2[q] = Vec(M(0));
        }
        for (int64_t r = t0; r < t1; ++r) {
          FASTOPT_UNROLL for (int b = 0; b < decltype(blocks)::value; ++b) {
            Vec xv[K], gv[K];
            T::IO::load(x + r * C + j + b * T::IO::kBlock, xv);
            if (kGradient) T::IO::load(dy + r * C + j + b * T::IO::kBlock, gv);
            FASTOPT_UNROLL for (int q = 0; q < K; ++q) {
              const Vec d = xv[q] - k[b * K + q];
              const Vec u = kGradient ? gv[q] : d;
              s1[b * K + q] = s1[b * K + q] + u;
              s2[b * K + q] = at::vec::fmadd(u, d, s2[b * K + q]);
            }
          }
        }
        FASTOPT_UNROLL for (int q = 0; q < W; ++q) {
          M* p1 = acc1 + j + q * T::kLanes;
          M* p2 = acc2 + j + q * T::kLanes;
          (Vec::loadu(p1) + s1[q]).store(p1);
          (Vec::loadu(p2) + s2[q]).store(p2);
        }
      };
      int64_t j = 0;
      for (; j + kColumnBlocks * T::IO::kBlock <= vec_end; j += kColumnBlocks * T::IO::kBlock) {
        columns(std::integral_constant<int, kColumnBlocks>{}, j);
      }
      for (; j < vec_end; j += T::IO::kBlock) columns(std::integral_constant<int, 1>{}, j);
      for (int64_t c = vec_end; c < C; ++c) {  // channels past the last full vector
        const M k = center[c];
        for (int64_t r = t0; r < t1; ++r) {
          const M d = static_cast<M>(x[r * C + c]) - k;
          const M u = kGradient ? static_cast<M>(dy[r * C + c]) : d;
          acc1[c] += u;
          acc2[c] += u * d;
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      sum1[c] += static_cast<double>(acc1[c]);
      sum2[c] += static_cast<double>(acc2[c]);
    }
  }
}

}  // namespace norm
}  // namespace CPU_CAPABILITY
}  // namespace fastopt::cpu
