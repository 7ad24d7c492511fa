// CUDA GroupNorm kernels (see group_norm_kernel.h).
//
// NOTE: [group norm passes]
// Every call is a few bandwidth-bound passes and small [N, G] / [C] steps:
//   forward:  statistics (one read of x) -> finalize -> normalize (read x, write y);
//   backward: per-channel sums of dz and dz * (x - mean) (one read of x, dy)
//             -> coefficients and weight gradients -> dx (read x, dy, write dx).
// The passes walk x in one of two ways, chosen by layout:
//   runs (channels first): a warp per (run, split), a run being a contiguous
//     stretch with one set of coefficients: a group's D * S values for the
//     statistics, an (n, c) plane's S values otherwise;
//   columns (channels last): a block per (sample, chunk of rows); each thread
//     owns one 16-byte column of channels and walks rows, so its per-channel
//     coefficients and sums stay in registers and loads coalesce along rows.
// Partial results go to a workspace and are combined by the next kernel in
// an order fixed by the shape, never by atomics, so results are the same
// bits run to run. Statistics are shifted sums (shift = a thread's first
// value), turned into (count, mean, M2) per thread and merged with Chan's
// formula, so a large mean does not cancel.
//
// Rows (G = 1, S = 1: LayerNorm) take a third way: a team of threads (a warp,
// or up to a block) per row keeps the row in registers, so the forward reads
// x once and the backward reads x and dy once. Rows longer than the teams can
// hold take the general channels-last path.
#include "cuda/kernels/group_norm_kernel.h"

#include <type_traits>

#include "common/moment_shift.h"
#include "cuda/kernels/vec_memory.cuh"

namespace fastopt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;
// Vectors a thread loads before it uses the first, to keep loads in flight.
constexpr int kUnroll = 4;
// Runs: split runs until about this many warps have work.
constexpr int64_t kTargetWarps = 16384;
// Columns: split samples into row chunks until about this many blocks.
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinChunkRows = 16;
// Rows: elements of a row each thread holds (the backward keeps four arrays
// of them, which must stay in registers at kMaxRowTeam threads), the largest
// team, and the most blocks (each block's weight-gradient partials are
// combined at the end).
template <typename M>
constexpr int kRowElems = sizeof(M) == 8 ? 8 : 16;
constexpr int kMaxRowTeam = 512;
constexpr int64_t kMaxRowBlocks = 512;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ---------------------------------------------------------------- element math
template <typename M>
__device__ __forceinline__ M exp_m(M v) {
  if constexpr (std::is_same_v<M, double>) {
    return exp(v);
  } else {
    return expf(v);
  }
}

// The activations as csrc/cpu/kernels/group_norm_kernel.cpp defines them.
template <NormActivation ACT>
struct Act {
  template <typename M>
  __device__ static M fwd(M z) {
    if constexpr (ACT == NormActivation::ReLU) {
      return z < M(0) ? M(0) : z;  // NaN stays NaN, as in torch
    } else if constexpr (ACT == NormActivation::SiLU) {
      return z / (M(1) + exp_m(-z));
    } else {
      return z;
    }
  }
  // d act(z) / dz times dy.
  template <typename M>
  __device__ static M grad(M z, M dy) {
    if constexpr (ACT == NormActivation::ReLU) {
      return z > M(0) ? dy : M(0);
    } else if constexpr (ACT == NormActivation::SiLU) {
      const M s = M(1) / (M(1) + exp_m(-z));
      return dy * s * (M(1) + z * (M(1) - s));
    } else {
      return dy;
    }
  }
};

// Count, mean and sum of squared deviations of some values.
template <typename M>
struct Moments {
  M n, mean, m2;
};

// Chan's parallel merge; exact in the counts, stable in the deviations.
template <typename M>
__device__ __forceinline__ Moments<M> merge(const Moments<M>& a, const Moments<M>& b) {
  if (b.n == M(0)) return a;
  if (a.n == M(0)) return b;
  const M n = a.n + b.n;
  const M wb = b.n / n;
  const M delta = b.mean - a.mean;
  return {n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb};
}

// The moments of n values summed as s1 = sum (v - shift), s2 = sum (v - shift)^2.
template <typename M>
__device__ __forceinline__ Moments<M> from_shifted(M shift, M s1, M s2, M n) {
  if (n == M(0)) return {M(0), M(0), M(0)};
  const M d = s1 / n;
  const M m2 = s2 - s1 * d;
  // Rounding can leave m2 a hair below 0; a NaN (from a NaN or inf value)
  // must stay NaN, as the CPU's two-pass variance and torch's do.
  return {n, shift + d, (m2 > M(0) || m2 != m2) ? m2 : M(0)};
}

// The warp's merged moments, in lane 0.
template <typename M>
__device__ __forceinline__ Moments<M> warp_merge(Moments<M> m) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const Moments<M> other{__shfl_down_sync(kFullMask, m.n, offset),
                           __shfl_down_sync(kFullMask, m.mean, offset),
                           __shfl_down_sync(kFullMask, m.m2, offset)};
    m = merge(m, other);
  }
  return m;
}

// The warp's sum, in every lane (a butterfly adds the same two partials in
// both lanes of each pair, so every lane holds the same bits).
template <typename M>
__device__ __forceinline__ M warp_sum(M v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <int VEC, typename T>
__device__ __forceinline__ void load(T (&dst)[VEC], const T* src) {
  if constexpr (VEC == kVecSize<T>) {
    load_vec(dst, src);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dst[j] = src[j];
  }
}

template <int VEC, typename T>
__device__ __forceinline__ void store(T* dst, const T (&src)[VEC]) {
  if constexpr (VEC == kVecSize<T>) {
    store_vec(dst, src);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dst[j] = src[j];
  }
}

// The arrays every pass reads per channel or group, in the arithmetic type.
template <typename M>
struct NormParams {
  const M* gamma;  // [C], null for 1
  const M* beta;   // [C], null for 0
  const M* mean;   // [N, G]
  const M* rstd;   // [N, G]
  const M* qr;     // [N, G, 2]: the backward's q and r; null in the forward
  int64_t C, G, D;
};

// One channel of one sample, as csrc/cpu/kernels/group_norm_kernel.cpp's
// general path: z = x * scale + shift, scale = rstd * gamma, shift = beta -
// mean * scale; dx = dz * scale + (x - mean) * q + r.
template <typename M, NormActivation ACT>
struct ChannelOps {
  M scale, shift, mean, q, r;

  __device__ static ChannelOps make(const NormParams<M>& p, int64_t n, int64_t c) {
    const int64_t ng = n * p.G + c / p.D;
    ChannelOps o;
    o.mean = p.mean[ng];
    o.scale = p.rstd[ng] * (p.gamma != nullptr ? p.gamma[c] : M(1));
    o.shift = (p.beta != nullptr ? p.beta[c] : M(0)) - o.mean * o.scale;
    o.q = p.qr != nullptr ? p.qr[2 * ng] : M(0);
    o.r = p.qr != nullptr ? p.qr[2 * ng + 1] : M(0);
    return o;
  }
  __device__ M y(M v) const { return Act<ACT>::fwd(v * scale + shift); }
  __device__ M dz(M v, M g) const {
    if constexpr (ACT == NormActivation::None) {
      return g;
    } else {
      return Act<ACT>::grad(v * scale + shift, g);
    }
  }
  __device__ M dx(M v, M g) const { return dz(v, g) * scale + (v - mean) * q + r; }
};

// What a reduction pass sums, and what a map pass writes.
enum class Reduce : int { Moments, GradSums };
enum class Map : int { Normalize, InputGrad };

// ---------------------------------------------------------------- runs (channels first)
template <typename T>
struct RunArgs {
  const T* x;
  const T* dy;
  T* out;
  opmath_t<T>* partials;  // reductions: [runs, parts, 2]
  NormParams<opmath_t<T>> params;
  int64_t runs, len, parts, chunk;  // chunk: a multiple of the vector size
};

// The (run, split) of this warp; false for the spare warps of the last block.
template <typename T>
__device__ __forceinline__ bool warp_item(const RunArgs<T>& a, int64_t& item, int64_t& run,
                                          int64_t& begin, int64_t& end) {
  item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (item >= a.runs * a.parts) return false;
  run = item / a.parts;
  begin = (item - run * a.parts) * a.chunk;
  end = begin + a.chunk < a.len ? begin + a.chunk : a.len;
  return true;
}

// Calls f(i, xv, dv) for the VEC-element groups of [begin, end) that `lane`
// owns, kUnroll groups loaded before the first is used. With VEC > 1 the
// range holds whole, aligned groups.
template <int VEC, bool HAS_DY, typename T, typename F>
__device__ __forceinline__ void warp_range(const T* x, const T* dy, int64_t begin, int64_t end,
                                           int lane, const F& f) {
  constexpr int64_t kStep = static_cast<int64_t>(kWarp) * VEC;
  for (int64_t i0 = begin + lane * VEC; i0 < end; i0 += kStep * kUnroll) {
    T xv[kUnroll][VEC];
    T dv[kUnroll][HAS_DY ? VEC : 1];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * kStep;
      if (i < end) {
        load<VEC>(xv[u], x + i);
        if constexpr (HAS_DY) load<VEC>(dv[u], dy + i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * kStep;
      if (i < end) f(i, xv[u], dv[u]);
    }
  }
}

// Moments: runs are groups (len D * S), partials (mean, M2).
// GradSums: runs are (n, c) planes (len S), partials (sum dz, sum dz * (x - mean)).
template <typename T, NormActivation ACT, Reduce RED, int VEC>
__global__ void __launch_bounds__(kThreads) run_reduce_kernel(RunArgs<T> a) {
  using M = opmath_t<T>;
  int64_t item, run, begin, end;
  if (!warp_item(a, item, run, begin, end)) return;  // the whole warp
  const int lane = threadIdx.x % kWarp;
  const T* x = a.x + run * a.len;
  M s1 = 0, s2 = 0;
  if constexpr (RED == Reduce::Moments) {
    const int64_t first = begin + lane * VEC;
    const M shift = first < end ? ::fastopt::norm::finite_shift(to_opmath(x[first])) : M(0);
    int64_t count = 0;
    warp_range<VEC, false, T>(x, nullptr, begin, end, lane, [&](int64_t, const T(&xv)[VEC], const auto&) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const M d = to_opmath(xv[j]) - shift;
        s1 += d;
        s2 += d * d;
      }
      count += VEC;
    });
    const Moments<M> m = warp_merge(from_shifted(shift, s1, s2, static_cast<M>(count)));
    s1 = m.mean;
    s2 = m.m2;
  } else {
    const ChannelOps<M, ACT> ops = ChannelOps<M, ACT>::make(a.params, run / a.params.C, run % a.params.C);
    warp_range<VEC, true>(x, a.dy + run * a.len, begin, end, lane,
                          [&](int64_t, const T(&xv)[VEC], const T(&dv)[VEC]) {
#pragma unroll
                            for (int j = 0; j < VEC; ++j) {
                              const M v = to_opmath(xv[j]);
                              const M dz = ops.dz(v, to_opmath(dv[j]));
                              s1 += dz;
                              s2 += dz * (v - ops.mean);
                            }
                          });
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
  }
  if (lane == 0) {
    a.partials[2 * item] = s1;
    a.partials[2 * item + 1] = s2;
  }
}

// y or dx over (n, c) planes.
template <typename T, NormActivation ACT, Map MAP, int VEC>
__global__ void __launch_bounds__(kThreads) run_map_kernel(RunArgs<T> a) {
  using M = opmath_t<T>;
  int64_t item, run, begin, end;
  if (!warp_item(a, item, run, begin, end)) return;
  const int lane = threadIdx.x % kWarp;
  const ChannelOps<M, ACT> ops = ChannelOps<M, ACT>::make(a.params, run / a.params.C, run % a.params.C);
  const T* x = a.x + run * a.len;
  T* out = a.out + run * a.len;
  constexpr bool kHasDy = MAP == Map::InputGrad;
  warp_range<VEC, kHasDy>(x, kHasDy ? a.dy + run * a.len : nullptr, begin, end, lane,
                          [&](int64_t i, const T(&xv)[VEC], const auto& dv) {
                            T ov[VEC];
#pragma unroll
                            for (int j = 0; j < VEC; ++j) {
                              const M v = to_opmath(xv[j]);
                              if constexpr (kHasDy) {
                                ov[j] = from_opmath<T>(ops.dx(v, to_opmath(dv[j])));
                              } else {
                                ov[j] = from_opmath<T>(ops.y(v));
                              }
                            }
                            store<VEC>(out + i, ov);
                          });
}

// ---------------------------------------------------------------- columns (channels last)
template <typename T>
struct ColumnArgs {
  const T* x;
  const T* dy;
  T* out;
  opmath_t<T>* partials;  // reductions: [N, parts, C, 2]
  NormParams<opmath_t<T>> params;
  int64_t S, C, parts, chunk;  // chunk: rows per part
};

// How a block's threads cover a chunk of rows: thread t owns the column
// (VEC channels) col0 + t % width of each column sweep and every `lanes`-th
// row from t / width; threads past width * lanes idle.
struct ColumnTiling {
  int64_t n, part, r0, r1, cols;
  int width, lanes, tc, rl;
  bool active;

  template <typename T>
  __device__ ColumnTiling(const ColumnArgs<T>& a, int vec) {
    n = blockIdx.x / a.parts;
    part = blockIdx.x - n * a.parts;
    r0 = part * a.chunk;
    r1 = r0 + a.chunk < a.S ? r0 + a.chunk : a.S;
    cols = a.C / vec;
    width = static_cast<int>(cols < kThreads ? cols : kThreads);
    lanes = kThreads / width;
    tc = static_cast<int>(threadIdx.x) % width;
    rl = static_cast<int>(threadIdx.x) / width;
    active = rl < lanes;
  }
  // Rows the thread of row lane l visits.
  __device__ int64_t rows_of(int l) const {
    const int64_t first = r0 + l;
    return first < r1 ? (r1 - first + lanes - 1) / lanes : 0;
  }
};

// Calls f(r, xv, dv) for the rows of the tiling's lane at column `col`.
template <int VEC, bool HAS_DY, typename T, typename F>
__device__ __forceinline__ void column_rows(const ColumnTiling& t, const T* x, const T* dy,
                                            int64_t C, int64_t col, const F& f) {
  const int64_t step = t.lanes;
  for (int64_t r0 = t.r0 + t.rl; r0 < t.r1; r0 += step * kUnroll) {
    T xv[kUnroll][VEC];
    T dv[kUnroll][HAS_DY ? VEC : 1];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = r0 + u * step;
      if (r < t.r1) {
        load<VEC>(xv[u], x + r * C + col * VEC);
        if constexpr (HAS_DY) load<VEC>(dv[u], dy + r * C + col * VEC);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = r0 + u * step;
      if (r < t.r1) f(r, xv[u], dv[u]);
    }
  }
}

// One thread's (mean, M2) of each of its VEC channels over its rows, shifted
// by its first row.
template <typename T, int VEC>
__device__ __forceinline__ void thread_column_moments(const ColumnTiling& t, const T* x, int64_t C,
                                                      int64_t col, opmath_t<T> (&mean)[VEC],
                                                      opmath_t<T> (&m2)[VEC]) {
  using M = opmath_t<T>;
  M shift[VEC], s1[VEC], s2[VEC];
  T first[VEC];
  const bool any = t.r0 + t.rl < t.r1;
  if (any) load<VEC>(first, x + (t.r0 + t.rl) * C + col * VEC);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    shift[j] = any ? ::fastopt::norm::finite_shift(to_opmath(first[j])) : M(0);
    s1[j] = s2[j] = M(0);
  }
  column_rows<VEC, false, T>(t, x, nullptr, C, col, [&](int64_t, const T(&xv)[VEC], const auto&) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const M d = to_opmath(xv[j]) - shift[j];
      s1[j] += d;
      s2[j] += d * d;
    }
  });
  const M count = static_cast<M>(t.rows_of(t.rl));
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const Moments<M> m = from_shifted(shift[j], s1[j], s2[j], count);
    mean[j] = m.mean;
    m2[j] = m.m2;
  }
}

// One thread's sums of dz and dz * (x - mean) of each of its VEC channels.
template <typename T, NormActivation ACT, int VEC>
__device__ __forceinline__ void thread_column_grad_sums(const ColumnTiling& t, const ColumnArgs<T>& a,
                                                        int64_t base, int64_t col,
                                                        opmath_t<T> (&sum_dz)[VEC],
                                                        opmath_t<T> (&sum_dz_xc)[VEC]) {
  using M = opmath_t<T>;
  ChannelOps<M, ACT> ops[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    ops[j] = ChannelOps<M, ACT>::make(a.params, t.n, col * VEC + j);
    sum_dz[j] = sum_dz_xc[j] = M(0);
  }
  column_rows<VEC, true>(t, a.x + base, a.dy + base, a.C, col,
                         [&](int64_t, const T(&xv)[VEC], const T(&dv)[VEC]) {
#pragma unroll
                           for (int j = 0; j < VEC; ++j) {
                             const M v = to_opmath(xv[j]);
                             const M dz = ops[j].dz(v, to_opmath(dv[j]));
                             sum_dz[j] += dz;
                             sum_dz_xc[j] += dz * (v - ops[j].mean);
                           }
                         });
}

// Per-channel partials of one (sample, chunk of rows), as run_reduce_kernel's:
// each thread's, then the row lanes of each column combined in order.
template <typename T, NormActivation ACT, Reduce RED, int VEC>
__global__ void __launch_bounds__(kThreads) column_reduce_kernel(ColumnArgs<T> a) {
  using M = opmath_t<T>;
  __shared__ M shared[2][kThreads * VEC];
  const ColumnTiling t(a, VEC);
  const int64_t base = t.n * a.S * a.C;
  for (int64_t col0 = 0; col0 < t.cols; col0 += t.width) {  // uniform over the block
    const int64_t col = col0 + t.tc;
    const bool mine = t.active && col < t.cols;
    if (mine) {
      M p0[VEC], p1[VEC];
      if constexpr (RED == Reduce::Moments) {
        thread_column_moments<T, VEC>(t, a.x + base, a.C, col, p0, p1);
      } else {
        thread_column_grad_sums<T, ACT, VEC>(t, a, base, col, p0, p1);
      }
      const int slot = (t.rl * t.width + t.tc) * VEC;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        shared[0][slot + j] = p0[j];
        shared[1][slot + j] = p1[j];
      }
    }
    __syncthreads();
    if (mine && t.rl == 0) {  // the row lanes of this column, in order
      M* out = a.partials + ((t.n * a.parts + t.part) * a.C + col * VEC) * 2;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if constexpr (RED == Reduce::Moments) {
          Moments<M> acc{M(0), M(0), M(0)};
          for (int l = 0; l < t.lanes; ++l) {
            const int s = (l * t.width + t.tc) * VEC + j;
            acc = merge(acc, Moments<M>{static_cast<M>(t.rows_of(l)), shared[0][s], shared[1][s]});
          }
          out[2 * j] = acc.mean;
          out[2 * j + 1] = acc.m2;
        } else {
          M p = 0, q = 0;
          for (int l = 0; l < t.lanes; ++l) {
            const int s = (l * t.width + t.tc) * VEC + j;
            p += shared[0][s];
            q += shared[1][s];
          }
          out[2 * j] = p;
          out[2 * j + 1] = q;
        }
      }
    }
    __syncthreads();  // the next sweep reuses `shared`
  }
}

template <typename T, NormActivation ACT, Map MAP, int VEC>
__global__ void __launch_bounds__(kThreads) column_map_kernel(ColumnArgs<T> a) {
  using M = opmath_t<T>;
  const ColumnTiling t(a, VEC);
  if (!t.active) return;
  const int64_t base = t.n * a.S * a.C;
  constexpr bool kHasDy = MAP == Map::InputGrad;
  for (int64_t col = t.tc; col < t.cols; col += t.width) {
    ChannelOps<M, ACT> ops[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) ops[j] = ChannelOps<M, ACT>::make(a.params, t.n, col * VEC + j);
    T* out = a.out + base + col * VEC;
    column_rows<VEC, kHasDy>(t, a.x + base, kHasDy ? a.dy + base : nullptr, a.C, col,
                             [&](int64_t r, const T(&xv)[VEC], const auto& dv) {
                               T ov[VEC];
#pragma unroll
                               for (int j = 0; j < VEC; ++j) {
                                 const M v = to_opmath(xv[j]);
                                 if constexpr (kHasDy) {
                                   ov[j] = from_opmath<T>(ops[j].dx(v, to_opmath(dv[j])));
                                 } else {
                                   ov[j] = from_opmath<T>(ops[j].y(v));
                                 }
                               }
                               store<VEC>(out + r * a.C, ov);
                             });
  }
}

// ---------------------------------------------------------------- [N, G] and [C] steps
// Where partials lie, in pairs: entry (k, j) of (n, i), k < parts, j < width,
// at n * sn + i * si + k * sk + j, i a group (statistics) or a channel
// (gradient sums). Entry k covers count(k) values per j: min(chunk, total -
// k * chunk).
template <typename M>
struct PartialsView {
  const M* partials;
  int64_t parts, width, sn, si, sk, total, chunk;
  __device__ M count(int64_t k) const {
    const int64_t left = total - k * chunk;
    return static_cast<M>(left < chunk ? left : chunk);
  }
};

// mean and rstd of every (n, g): a warp each, lanes merging strided entries
// in order, then the warp's tree.
template <typename M>
__global__ void __launch_bounds__(kThreads)
    finalize_moments_kernel(PartialsView<M> v, int64_t N, int64_t G, double eps, M* mean, M* rstd) {
  const int64_t ng = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (ng >= N * G) return;
  const int lane = threadIdx.x % kWarp;
  const M* base = v.partials + 2 * ((ng / G) * v.sn + (ng % G) * v.si);
  Moments<M> acc{M(0), M(0), M(0)};
  for (int64_t e = lane; e < v.parts * v.width; e += kWarp) {
    const int64_t k = e / v.width, j = e - k * v.width;
    const M* p = base + 2 * (k * v.sk + j);
    acc = merge(acc, Moments<M>{v.count(k), p[0], p[1]});
  }
  acc = warp_merge(acc);
  if (lane == 0) {
    mean[ng] = acc.mean;
    rstd[ng] = M(1) / sqrt(acc.m2 / acc.n + static_cast<M>(eps));
  }
}

// Per (n, g): the per-channel sums a_nc = sum dz and b_nc = sum dz * (x - mean)
// into ab [N, C, 2], and the coefficients of dx into qr [N, G, 2]:
//   q = -rstd^3 / L * sum_c gamma_c b_nc,  r = -rstd / L * sum_c gamma_c a_nc,
// L = D * S, as the CPU's backward.
template <typename M>
__global__ void __launch_bounds__(kThreads)
    grad_coefficients_kernel(PartialsView<M> v, NormParams<M> p, int64_t N, int64_t S, M* ab, M* qr) {
  const int64_t ng = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (ng >= N * p.G) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t n = ng / p.G, g = ng % p.G;
  M sum_a = 0, sum_b = 0;
  for (int64_t j = lane; j < p.D; j += kWarp) {
    const int64_t c = g * p.D + j;
    const M* e = v.partials + 2 * (n * v.sn + c * v.si);
    M a = 0, b = 0;
    for (int64_t k = 0; k < v.parts; ++k) {
      a += e[2 * k * v.sk];
      b += e[2 * k * v.sk + 1];
    }
    ab[2 * (n * p.C + c)] = a;
    ab[2 * (n * p.C + c) + 1] = b;
    const M w = p.gamma != nullptr ? p.gamma[c] : M(1);
    sum_a += w * a;
    sum_b += w * b;
  }
  sum_a = warp_sum(sum_a);
  sum_b = warp_sum(sum_b);
  if (lane == 0) {
    const M r = p.rstd[ng], inv_l = M(1) / static_cast<M>(p.D * S);
    qr[2 * ng] = -r * r * r * inv_l * sum_b;
    qr[2 * ng + 1] = -r * inv_l * sum_a;
  }
}

// dgamma_c = sum_n rstd_ng b_nc and dbeta_c = sum_n a_nc, over n in order.
template <typename M>
__global__ void __launch_bounds__(kThreads)
    param_grad_kernel(const M* ab, const M* rstd, int64_t N, int64_t C, int64_t G, M* dgamma, M* dbeta) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  const int64_t g = c / (C / G);
  M dg = 0, db = 0;
  for (int64_t n = 0; n < N; ++n) {
    dg += rstd[n * G + g] * ab[2 * (n * C + c) + 1];
    db += ab[2 * (n * C + c)];
  }
  dgamma[c] = dg;
  dbeta[c] = db;
}

// out[j] = sum over blocks b of partials[b][j], j < width, in order.
template <typename M>
__global__ void __launch_bounds__(kThreads)
    sum_blocks_kernel(const M* partials, int64_t blocks, int64_t width, M* out0, M* out1, int64_t split) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= width) return;
  M total = 0;
  for (int64_t b = 0; b < blocks; ++b) total += partials[b * width + j];
  if (j < split) {
    out0[j] = total;
  } else {
    out1[j - split] = total;
  }
}

// ---------------------------------------------------------------- rows (G = 1, S = 1)
template <typename T>
struct RowArgs {
  const T* x;
  const T* dy;
  T* out;
  const opmath_t<T>* gamma;
  const opmath_t<T>* beta;
  opmath_t<T>* mean;  // [N]
  opmath_t<T>* rstd;  // [N]
  opmath_t<T>* partials;  // backward: [gridDim.x, 2, C] (dgamma | dbeta)
  int64_t N, C;
  int team;  // threads per row: 32, or a power of two up to kMaxRowTeam
  double eps;
};

// The sum over a team, the same bits in every thread of it. Teams wider than
// a warp add their warps' sums through `shared` in order; every thread of the
// block must call it together.
template <typename M>
__device__ __forceinline__ M team_sum(M v, int team, M* shared) {
  v = warp_sum(v);
  if (team == kWarp) return v;
  const int warp = threadIdx.x / kWarp, first = (threadIdx.x / team) * (team / kWarp);
  if (threadIdx.x % kWarp == 0) shared[warp] = v;
  __syncthreads();
  M total = 0;
  for (int w = first; w < first + team / kWarp; ++w) total += shared[w];
  __syncthreads();
  return total;
}

// The first element of a thread's slot s of a row: slots interleave the
// team's threads, VEC elements each, so a team's loads coalesce.
__device__ __forceinline__ int64_t slot_start(int s, int team, int tt, int vec) {
  return (static_cast<int64_t>(s) * team + tt) * vec;
}

// out[i] = f(s, j, i) over the elements i = slot_start(s) + j of the thread's
// slots that lie in the row.
template <int VEC, int SLOTS, typename T, typename F>
__device__ __forceinline__ void store_row(T* out, int64_t C, int team, int tt, const F& f) {
#pragma unroll
  for (int s = 0; s < SLOTS; ++s) {
    const int64_t i = slot_start(s, team, tt, VEC);
    if (i >= C) continue;
    T ov[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) ov[j] = from_opmath<T>(f(s, j, i + j));
    store<VEC>(out + i, ov);
  }
}

template <typename T, NormActivation ACT, int VEC>
__global__ void __launch_bounds__(kMaxRowTeam) row_fwd_kernel(RowArgs<T> a) {
  using M = opmath_t<T>;
  constexpr int kSlots = kRowElems<M> / VEC;
  __shared__ M shared[kMaxRowTeam / kWarp];
  const int tt = static_cast<int>(threadIdx.x) % a.team;
  // Every block iterates as often as its first team (row may be past N), so
  // that teams wider than a warp can synchronise.
  const int64_t teams = blockDim.x / a.team;
  for (int64_t first = blockIdx.x * teams; first < a.N; first += gridDim.x * teams) {
    const int64_t row = first + threadIdx.x / a.team;
    const bool valid = row < a.N;
    const T* x = a.x + row * a.C;
    M v[kSlots][VEC];
    M sum = 0;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t i = slot_start(s, a.team, tt, VEC);
      T xv[VEC];
      if (valid && i < a.C) {
        load<VEC>(xv, x + i);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) xv[j] = from_opmath<T>(M(0));
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        v[s][j] = to_opmath(xv[j]);
        sum += v[s][j];
      }
    }
    const M inv_c = M(1) / static_cast<M>(a.C);
    const M mu = team_sum(sum, a.team, shared) * inv_c;
    // The row is in registers: the exact two-pass variance costs no read.
    M sq = 0;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t i = slot_start(s, a.team, tt, VEC);
      if (i < a.C) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) sq += (v[s][j] - mu) * (v[s][j] - mu);
      }
    }
    const M r = M(1) / sqrt(team_sum(sq, a.team, shared) * inv_c + static_cast<M>(a.eps));
    if (!valid) continue;
    if (tt == 0) {
      a.mean[row] = mu;
      a.rstd[row] = r;
    }
    store_row<VEC, kSlots>(a.out + row * a.C, a.C, a.team, tt, [&](int s, int j, int64_t c) {
      const M w = a.gamma != nullptr ? a.gamma[c] : M(1);
      const M b = a.beta != nullptr ? a.beta[c] : M(0);
      return Act<ACT>::fwd((v[s][j] - mu) * (r * w) + b);
    });
  }
}

// As the CPU's backward_row: dz from z = (x - mean) * rstd * gamma + beta,
// sums a = sum dz * gamma and b = sum dz * gamma * (x - mean), then
// dx = dz * gamma * rstd + (x - mean) * q + r; each thread keeps its columns'
// dgamma and dbeta over the rows its team visits.
template <typename T, NormActivation ACT, int VEC>
__global__ void __launch_bounds__(kMaxRowTeam) row_bwd_kernel(RowArgs<T> a) {
  using M = opmath_t<T>;
  constexpr int kSlots = kRowElems<M> / VEC;
  __shared__ M shared[kMaxRowTeam / kWarp];
  __shared__ M combine[2][kThreads * VEC];
  const int tt = static_cast<int>(threadIdx.x) % a.team;
  M dgamma[kSlots][VEC], dbeta[kSlots][VEC];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dgamma[s][j] = dbeta[s][j] = M(0);
  }
  // Every block iterates as often as its first team (row may be past N), so
  // that teams wider than a warp can synchronise.
  const int64_t teams = blockDim.x / a.team;
  for (int64_t first = blockIdx.x * teams; first < a.N; first += gridDim.x * teams) {
    const int64_t row = first + threadIdx.x / a.team;
    const bool valid = row < a.N;
    const M mu = valid ? a.mean[row] : M(0), r = valid ? a.rstd[row] : M(0);
    M v[kSlots][VEC], dz[kSlots][VEC];
    M sum_a = 0, sum_b = 0;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t i = slot_start(s, a.team, tt, VEC);
      const bool in = valid && i < a.C;
      T xv[VEC], dv[VEC];
      if (in) {
        load<VEC>(xv, a.x + row * a.C + i);
        load<VEC>(dv, a.dy + row * a.C + i);
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        v[s][j] = dz[s][j] = M(0);
        if (!in) continue;
        const M w = a.gamma != nullptr ? a.gamma[i + j] : M(1);
        v[s][j] = to_opmath(xv[j]);
        const M centred = v[s][j] - mu;
        if constexpr (ACT == NormActivation::None) {
          dz[s][j] = to_opmath(dv[j]);
        } else {
          const M b = a.beta != nullptr ? a.beta[i + j] : M(0);
          dz[s][j] = Act<ACT>::grad(centred * (r * w) + b, to_opmath(dv[j]));
        }
        const M dzw = dz[s][j] * w;
        sum_a += dzw;
        sum_b += dzw * centred;
        dgamma[s][j] += dz[s][j] * centred * r;
        dbeta[s][j] += dz[s][j];
      }
    }
    const M inv_c = M(1) / static_cast<M>(a.C);
    sum_a = team_sum(sum_a, a.team, shared);
    sum_b = team_sum(sum_b, a.team, shared);
    if (!valid) continue;
    const M q = -r * r * r * inv_c * sum_b, rr = -r * inv_c * sum_a;
    store_row<VEC, kSlots>(a.out + row * a.C, a.C, a.team, tt, [&](int s, int j, int64_t c) {
      const M w = a.gamma != nullptr ? a.gamma[c] : M(1);
      return dz[s][j] * (w * r) + (v[s][j] - mu) * q + rr;
    });
  }
  // The block's [dgamma | dbeta] partial: the teams' columns added in team
  // order (one team per block writes its own directly).
  M* out = a.partials + static_cast<int64_t>(blockIdx.x) * 2 * a.C;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int64_t i = slot_start(s, a.team, tt, VEC);
    if (teams == 1) {
      for (int j = 0; j < VEC && i < a.C; ++j) {
        out[i + j] = dgamma[s][j];
        out[a.C + i + j] = dbeta[s][j];
      }
      continue;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      combine[0][threadIdx.x * VEC + j] = dgamma[s][j];
      combine[1][threadIdx.x * VEC + j] = dbeta[s][j];
    }
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < a.team && i < a.C) {
      for (int j = 0; j < VEC; ++j) {
        M dg = 0, db = 0;
        for (int team = 0; team < teams; ++team) {
          dg += combine[0][(team * a.team + tt) * VEC + j];
          db += combine[1][(team * a.team + tt) * VEC + j];
        }
        out[i + j] = dg;
        out[a.C + i + j] = db;
      }
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------- host side
// How a call is cut up: a function of the shape alone, so that the
// workspace size and the order of every sum are fixed by it.
struct Plan {
  int vec;  // elements of a 16-byte vector of the dtype
  // Rows.
  bool rows;
  int team;
  int64_t row_blocks;
  // Channels first: groups (statistics) and planes (everything else) as runs.
  int64_t group_parts, group_chunk, plane_parts, plane_chunk;
  // Channels last: row chunks of each sample.
  int64_t row_parts, row_chunk;
};

int dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::Float64:
      return 8;
    case DType::Float32:
      return 4;
    default:
      return 2;
  }
}

void split_runs(int64_t runs, int64_t len, int vec, int64_t& parts, int64_t& chunk) {
  const int64_t min_chunk = static_cast<int64_t>(kWarp) * vec * kUnroll;
  parts = clamp64(ceil_div(kTargetWarps, runs), 1, ceil_div(len, min_chunk));
  chunk = ceil_div(ceil_div(len, parts), vec) * vec;
  parts = ceil_div(len, chunk);
}

Plan make_plan(const GroupNormShape& s) {
  Plan p{};
  p.vec = 16 / dtype_bytes(s.dtype);
  const int64_t row_elems = s.dtype == DType::Float64 ? kRowElems<double> : kRowElems<float>;
  p.rows = s.G == 1 && s.S == 1 && s.C <= kMaxRowTeam * row_elems;
  if (p.rows) {
    int team = kWarp;
    while (team * row_elems < s.C) team *= 2;
    p.team = team;
    const int64_t teams_per_block = (team < kThreads ? kThreads : team) / team;
    p.row_blocks = clamp64(ceil_div(s.N, teams_per_block), 1, kMaxRowBlocks);
    return p;
  }
  if (s.channels_last) {
    p.row_parts = clamp64(ceil_div(kTargetBlocks, s.N), 1, ceil_div(s.S, kMinChunkRows));
    p.row_chunk = ceil_div(s.S, p.row_parts);
    p.row_parts = ceil_div(s.S, p.row_chunk);
  } else {
    split_runs(s.N * s.G, s.C / s.G * s.S, p.vec, p.group_parts, p.group_chunk);
    split_runs(s.N * s.C, s.S, p.vec, p.plane_parts, p.plane_chunk);
  }
  return p;
}

// Workspace layouts, in elements of the arithmetic type.
int64_t fwd_partials(const GroupNormShape& s, const Plan& p) {
  if (p.rows) return 0;
  return 2 * (s.channels_last ? s.N * p.row_parts * s.C : s.N * s.G * p.group_parts);
}
int64_t bwd_partials(const GroupNormShape& s, const Plan& p) {
  if (p.rows) return 2 * p.row_blocks * s.C;
  return 2 * s.N * s.C * (s.channels_last ? p.row_parts : p.plane_parts);
}
int64_t bwd_elements(const GroupNormShape& s, const Plan& p) {
  return bwd_partials(s, p) + (p.rows ? 0 : 2 * s.N * s.C + 2 * s.N * s.G);
}

int64_t numel(const GroupNormShape& s) { return s.N * s.C * s.S; }

bool aligned(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

unsigned blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned>(ceil_div(items, per_block));
}

// Calls fn(std::integral_constant<NormActivation, A>{}) for the runtime activation.
template <typename Fn>
void with_activation(NormActivation act, const Fn& fn) {
  switch (act) {
    case NormActivation::ReLU:
      return fn(std::integral_constant<NormActivation, NormActivation::ReLU>{});
    case NormActivation::SiLU:
      return fn(std::integral_constant<NormActivation, NormActivation::SiLU>{});
    default:
      return fn(std::integral_constant<NormActivation, NormActivation::None>{});
  }
}

template <typename T>
void fwd_typed(const GroupNormFwdLaunch& l, cudaStream_t stream) {
  using M = opmath_t<T>;
  const GroupNormShape& s = l.shape;
  const Plan p = make_plan(s);
  const T* x = static_cast<const T*>(l.x);
  T* y = static_cast<T*>(l.y);
  const M* gamma = static_cast<const M*>(l.gamma);
  const M* beta = static_cast<const M*>(l.beta);
  M* mean = static_cast<M*>(l.mean);
  M* rstd = static_cast<M*>(l.rstd);
  const bool ptrs_aligned = aligned(x) && aligned(y);

  if (p.rows) {
    const RowArgs<T> a{x, nullptr, y, gamma, beta, mean, rstd, nullptr, s.N, s.C, p.team, l.eps};
    const int threads = p.team < kThreads ? kThreads : p.team;
    with_activation(s.activation, [&](auto act) {
      with_vec<T>(ptrs_aligned && s.C % p.vec == 0, [&](auto vec) {
        row_fwd_kernel<T, decltype(act)::value, decltype(vec)::value>
            <<<static_cast<unsigned>(p.row_blocks), threads, 0, stream>>>(a);
      });
    });
    return;
  }

  M* partials = static_cast<M*>(l.workspace);
  const NormParams<M> params{gamma, beta, mean, rstd, nullptr, s.C, s.G, s.C / s.G};
  const int64_t D = s.C / s.G;
  PartialsView<M> view;
  if (s.channels_last) {
    const ColumnArgs<T> a{x, nullptr, y, partials, params, s.S, s.C, p.row_parts, p.row_chunk};
    const bool vectorize = ptrs_aligned && s.C % p.vec == 0;
    const unsigned grid = static_cast<unsigned>(s.N * p.row_parts);
    with_vec<T>(vectorize, [&](auto vec) {
      column_reduce_kernel<T, NormActivation::None, Reduce::Moments, decltype(vec)::value>
          <<<grid, kThreads, 0, stream>>>(a);
    });
    view = {partials, p.row_parts, D, p.row_parts * s.C, D, s.C, s.S, p.row_chunk};
    finalize_moments_kernel<M><<<blocks_for(s.N * s.G, kWarps), kThreads, 0, stream>>>(
        view, s.N, s.G, l.eps, mean, rstd);
    with_activation(s.activation, [&](auto act) {
      with_vec<T>(vectorize, [&](auto vec) {
        column_map_kernel<T, decltype(act)::value, Map::Normalize, decltype(vec)::value>
            <<<grid, kThreads, 0, stream>>>(a);
      });
    });
    return;
  }
  const RunArgs<T> groups{x, nullptr, y, partials, params, s.N * s.G, D * s.S, p.group_parts,
                          p.group_chunk};
  with_vec<T>(ptrs_aligned && (D * s.S) % p.vec == 0, [&](auto vec) {
    run_reduce_kernel<T, NormActivation::None, Reduce::Moments, decltype(vec)::value>
        <<<blocks_for(groups.runs * groups.parts, kWarps), kThreads, 0, stream>>>(groups);
  });
  view = {partials, p.group_parts, 1, s.G * p.group_parts, p.group_parts, 1, D * s.S, p.group_chunk};
  finalize_moments_kernel<M><<<blocks_for(s.N * s.G, kWarps), kThreads, 0, stream>>>(
      view, s.N, s.G, l.eps, mean, rstd);
  const RunArgs<T> planes{x, nullptr, y, nullptr, params, s.N * s.C, s.S, p.plane_parts,
                          p.plane_chunk};
  with_activation(s.activation, [&](auto act) {
    with_vec<T>(ptrs_aligned && s.S % p.vec == 0, [&](auto vec) {
      run_map_kernel<T, decltype(act)::value, Map::Normalize, decltype(vec)::value>
          <<<blocks_for(planes.runs * planes.parts, kWarps), kThreads, 0, stream>>>(planes);
    });
  });
}

template <typename T>
void bwd_typed(const GroupNormBwdLaunch& l, cudaStream_t stream) {
  using M = opmath_t<T>;
  const GroupNormShape& s = l.shape;
  const Plan p = make_plan(s);
  const T* x = static_cast<const T*>(l.x);
  const T* dy = static_cast<const T*>(l.dy);
  T* dx = static_cast<T*>(l.dx);
  const M* gamma = static_cast<const M*>(l.gamma);
  const M* beta = static_cast<const M*>(l.beta);
  const M* mean = static_cast<const M*>(l.mean);
  const M* rstd = static_cast<const M*>(l.rstd);
  M* dgamma = static_cast<M*>(l.dgamma);
  M* dbeta = static_cast<M*>(l.dbeta);
  M* partials = static_cast<M*>(l.workspace);
  const bool ptrs_aligned = aligned(x) && aligned(dy) && aligned(dx);

  if (p.rows) {
    // The kernel only reads mean and rstd through these.
    const RowArgs<T> a{x, dy, dx, gamma, beta, const_cast<M*>(mean), const_cast<M*>(rstd),
                       partials, s.N, s.C, p.team, 0.0};
    const int threads = p.team < kThreads ? kThreads : p.team;
    with_activation(s.activation, [&](auto act) {
      with_vec<T>(ptrs_aligned && s.C % p.vec == 0, [&](auto vec) {
        row_bwd_kernel<T, decltype(act)::value, decltype(vec)::value>
            <<<static_cast<unsigned>(p.row_blocks), threads, 0, stream>>>(a);
      });
    });
    sum_blocks_kernel<M><<<blocks_for(2 * s.C, kThreads), kThreads, 0, stream>>>(
        partials, p.row_blocks, 2 * s.C, dgamma, dbeta, s.C);
    return;
  }

  M* ab = partials + bwd_partials(s, p);
  M* qr = ab + 2 * s.N * s.C;
  NormParams<M> params{gamma, beta, mean, rstd, nullptr, s.C, s.G, s.C / s.G};
  PartialsView<M> view;
  if (s.channels_last) {
    ColumnArgs<T> a{x, dy, dx, partials, params, s.S, s.C, p.row_parts, p.row_chunk};
    const bool vectorize = ptrs_aligned && s.C % p.vec == 0;
    const unsigned grid = static_cast<unsigned>(s.N * p.row_parts);
    with_activation(s.activation, [&](auto act) {
      with_vec<T>(vectorize, [&](auto vec) {
        column_reduce_kernel<T, decltype(act)::value, Reduce::GradSums, decltype(vec)::value>
            <<<grid, kThreads, 0, stream>>>(a);
      });
    });
    // Channel c's entry k at (n * parts + k) * C + c.
    view = {partials, p.row_parts, 1, p.row_parts * s.C, 1, s.C, s.S, p.row_chunk};
    grad_coefficients_kernel<M><<<blocks_for(s.N * s.G, kWarps), kThreads, 0, stream>>>(
        view, params, s.N, s.S, ab, qr);
    a.params.qr = qr;
    with_activation(s.activation, [&](auto act) {
      with_vec<T>(vectorize, [&](auto vec) {
        column_map_kernel<T, decltype(act)::value, Map::InputGrad, decltype(vec)::value>
            <<<grid, kThreads, 0, stream>>>(a);
      });
    });
  } else {
    RunArgs<T> planes{x, dy, dx, partials, params, s.N * s.C, s.S, p.plane_parts, p.plane_chunk};
    const bool vectorize = ptrs_aligned && s.S % p.vec == 0;
    const unsigned grid = blocks_for(planes.runs * planes.parts, kWarps);
    with_activation(s.activation, [&](auto act) {
      with_vec<T>(vectorize, [&](auto vec) {
        run_reduce_kernel<T, decltype(act)::value, Reduce::GradSums, decltype(vec)::value>
            <<<grid, kThreads, 0, stream>>>(planes);
      });
    });
    // Channel c's entry k at (n * C + c) * parts + k.
    view = {partials, p.plane_parts, 1, s.C * p.plane_parts, p.plane_parts, 1, s.S, p.plane_chunk};
    grad_coefficients_kernel<M><<<blocks_for(s.N * s.G, kWarps), kThreads, 0, stream>>>(
        view, params, s.N, s.S, ab, qr);
    planes.params.qr = qr;
    with_activation(s.activation, [&](auto act) {
      with_vec<T>(vectorize, [&](auto vec) {
        run_map_kernel<T, decltype(act)::value, Map::InputGrad, decltype(vec)::value>
            <<<grid, kThreads, 0, stream>>>(planes);
      });
    });
  }
  param_grad_kernel<M><<<blocks_for(s.C, kThreads), kThreads, 0, stream>>>(ab, rstd, s.N, s.C, s.G,
                                                                           dgamma, dbeta);
}

int64_t opmath_bytes(DType dtype) { return dtype == DType::Float64 ? 8 : 4; }


}  // namespace

int64_t group_norm_fwd_workspace(const GroupNormShape& shape) {
  if (numel(shape) == 0) return 0;
  return fwd_partials(shape, make_plan(shape)) * opmath_bytes(shape.dtype);
}

int64_t group_norm_bwd_workspace(const GroupNormShape& shape) {
  if (numel(shape) == 0) return 0;
  return bwd_elements(shape, make_plan(shape)) * opmath_bytes(shape.dtype);
}

void launch_group_norm_fwd(const GroupNormFwdLaunch& l, cudaStream_t stream) {
  if (numel(l.shape) == 0) return;
  dispatch_dtype(l.shape.dtype, [&](auto tag) { fwd_typed<typename decltype(tag)::type>(l, stream); });
}

void launch_group_norm_bwd(const GroupNormBwdLaunch& l, cudaStream_t stream) {
  if (numel(l.shape) == 0) return;
  dispatch_dtype(l.shape.dtype, [&](auto tag) { bwd_typed<typename decltype(tag)::type>(l, stream); });
}

}  // namespace fastopt::cuda
