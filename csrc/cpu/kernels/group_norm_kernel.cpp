// GroupNorm/LayerNorm/InstanceNorm CPU kernels (see group_norm_kernel.h).
// Compiled once per instruction set (see cpu/isa.h); every symbol here lives
// in the CPU_CAPABILITY namespace or carries its name, and nothing throws.
//
// Each kernel works in three steps, the middle one shared by both layouts:
//   1. a layout-specific pass over the sample (statistics, or the backward's
//      per-channel sums of dz and dz * (x - mean));
//   2. per-channel coefficients from the per-group results, into scratch;
//   3. a layout-specific elementwise pass with those coefficients: a scalar
//      per contiguous run (channels first) or a vector along each contiguous
//      row of C channels (channels last, and LayerNorm).
#include "cpu/kernels/group_norm_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/moment_shift.h"
#include "cpu/kernels/norm_loops.h"
#include "cpu/kernels/vec_io.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace norm;

// ---------------------------------------------------------------- activations
// Written once for scalars and SIMD vectors; the vector overloads are the more
// specialised templates, so overload resolution picks them for vectors.
template <typename T>
inline T relu(T z) { return z < T(0) ? T(0) : z; }  // NaN stays NaN, as in torch
template <typename T>
inline Vectorized<T> relu(const Vectorized<T>& z) { return at::vec::clamp_min(z, Vectorized<T>(0)); }
template <typename T>
inline T relu_grad(T z, T dy) { return z > T(0) ? dy : T(0); }
template <typename T>
inline Vectorized<T> relu_grad(const Vectorized<T>& z, const Vectorized<T>& dy) {
  const Vectorized<T> zero(0);
  return Vectorized<T>::blendv(zero, dy, z > zero);
}
template <typename T>
inline T sigmoid(T z) { return T(1) / (T(1) + std::exp(-z)); }
template <typename T>
inline Vectorized<T> sigmoid(const Vectorized<T>& z) {
  const Vectorized<T> one(1);
  return one / (one + z.neg().exp_u20());
}

template <NormActivation ACT>
struct Act {
  template <typename T>
  static T fwd(const T& z) {
    if constexpr (ACT == NormActivation::ReLU) {
      return relu(z);
    } else if constexpr (ACT == NormActivation::SiLU) {
      return z * sigmoid(z);
    } else {
      return z;
    }
  }
  // d act(z) / dz times dy.
  template <typename T>
  static T grad(const T& z, const T& dy) {
    if constexpr (ACT == NormActivation::ReLU) {
      return relu_grad(z, dy);
    } else if constexpr (ACT == NormActivation::SiLU) {
      const T s = sigmoid(z);
      return dy * s * (T(1) + z * (T(1) - s));
    } else {
      return dy;
    }
  }
};

// ---------------------------------------------------------------- statistics
// p[i] += v for a scalar, or for the vector of lanes starting at i.
template <typename M, typename T>
inline void add_at(M* p, int64_t i, const T& v) {
  if constexpr (std::is_same_v<T, M>) {
    p[i] += v;
  } else {
    (T::loadu(p + i) + v).store(p + i);
  }
}

// p[i] += u and q[i] += u * w (fused where SIMD): the per-channel sums that
// the channels-last backward with an activation accumulates down the rows.
template <typename M, typename T>
inline void add_pair_at(M* p, M* q, int64_t i, const T& u, const T& w) {
  if constexpr (std::is_same_v<T, M>) {
    p[i] += u;
    q[i] += u * w;
  } else {
    (T::loadu(p + i) + u).store(p + i);
    at::vec::fmadd(u, w, T::loadu(q + i)).store(q + i);
  }
}

// Mean and sum of squared deviations of a contiguous run, in two passes: the
// second reads the run from cache, and unlike E[x^2] - E[x]^2 it does not
// cancel when the mean is large against the spread.
template <typename scalar_t, typename M = typename Types<scalar_t>::M>
void run_moments(const scalar_t* x, int64_t n, M& mean, M& m2) {
  mean = sum_elements<1, scalar_t>(x, nullptr, n, [](int64_t, auto v, auto) { return std::array{v}; })[0] /
         static_cast<M>(n);
  m2 = sum_elements<1, scalar_t>(x, nullptr, n, [mean](int64_t, auto v, auto) {
    using T = decltype(v);
    const T d = v - T(mean);
    return std::array{T(d * d)};
  })[0];
}

template <typename M>
inline M rstd_of(M m2, int64_t count, double eps) {
  return M(1) / std::sqrt(m2 / static_cast<M>(count) + static_cast<M>(eps));
}

// Scratch layout, in values of M from the sample's scratch pointer: [0, 6C)
// the per-channel arrays of the passes below, [6C, 8C) the partials of
// channel_sums_down_rows, [8C, 12C) its 2C double sums (8-byte aligned: the
// caller's scratch is, and 8C values of M are a multiple of 8 bytes).
constexpr int64_t kSumPartials = 6;
constexpr int64_t kSumTotals = 8;

// Per-channel sums down the S rows of a channels-last sample (NOTE:
// [channels-last reduction order] in norm_loops.h) into the M arrays s1, s2.
template <bool kGradient, typename scalar_t, typename M>
void channels_last_sums(const scalar_t* x, const scalar_t* dy, const M* center, int64_t C,
                        int64_t S, M* scratch, M* s1, M* s2) {
  double* totals = reinterpret_cast<double*>(scratch + kSumTotals * C);
  std::fill(totals, totals + 2 * C, 0.0);
  channel_sums_down_rows<scalar_t, kGradient>(x, dy, center, C, 0, S, scratch + kSumPartials * C,
                                              totals, totals + C);
  for (int64_t c = 0; c < C; ++c) {
    s1[c] = static_cast<M>(totals[c]);
    s2[c] = static_cast<M>(totals[C + c]);
  }
}

// Calls then(g) after each group's statistics.
template <typename scalar_t, typename M, typename Then>
void channels_first_stats(const GroupNormConfig& cfg, const scalar_t* x, M* mean, M* rstd,
                          const Then& then) {
  const int64_t L = cfg.C / cfg.G * cfg.S;
  for (int64_t g = 0; g < cfg.G; ++g) {
    M m2;
    run_moments(x + g * L, L, mean[g], m2);
    rstd[g] = rstd_of(m2, L, cfg.eps);
    then(g);
  }
}

// Channels last: one pass over the [S, C] rows sums, per channel, (x -
// shift_c) and its square (channels_last_sums), shifted by the mean of the channel's
// first rows (NOTE: [moment shift] in common/moment_shift.h, within the
// sample) so that a large mean does not cancel; Chan's formula then merges
// the D channels of each group exactly. At S = 1 (LayerNorm) each group is a
// contiguous run instead.
template <typename scalar_t, typename M>
void channels_last_stats(const GroupNormConfig& cfg, const scalar_t* x, M* mean, M* rstd,
                         M* scratch) {
  const int64_t C = cfg.C, S = cfg.S, D = C / cfg.G;
  if (S == 1) {
    for (int64_t g = 0; g < cfg.G; ++g) {
      M m2;
      run_moments(x + g * D, D, mean[g], m2);
      rstd[g] = rstd_of(m2, D, cfg.eps);
    }
    return;
  }
  M* shift = scratch;
  M* s1 = scratch + C;
  M* s2 = scratch + 2 * C;
  // Only the constant of the shared header: its shift_extent would be a
  // shared inline symbol, which this per-ISA file must not define (top).
  const int64_t shift_rows = std::min(S, ::fastopt::norm::kShiftValues);
  std::fill(shift, shift + C, M(0));  // s1 and s2 are written by channels_last_sums
  for (int64_t s = 0; s < shift_rows; ++s) {
    for (int64_t c = 0; c < C; ++c) shift[c] += static_cast<M>(x[s * C + c]);
  }
  for (int64_t c = 0; c < C; ++c) {
    // The shared header's finite_shift, written out (see above): an inf among
    // the first rows must not make every shifted value NaN.
    const M k = shift[c] / static_cast<M>(shift_rows);
    shift[c] = k - k == M(0) ? k : M(0);
  }
  channels_last_sums<false>(x, static_cast<const scalar_t*>(nullptr), shift, C, S, scratch, s1, s2);
  const M inv_s = M(1) / static_cast<M>(S);
  for (int64_t g = 0; g < cfg.G; ++g) {
    M sum_means = 0, m2 = 0;
    for (int64_t c = g * D; c < (g + 1) * D; ++c) {
      s2[c] -= s1[c] * s1[c] * inv_s;  // the channel's own sum of squared deviations
      s1[c] = shift[c] + s1[c] * inv_s;  // the channel's mean
      sum_means += s1[c];
      m2 += s2[c];
    }
    const M group_mean = sum_means / static_cast<M>(D);
    M spread = 0;
    for (int64_t c = g * D; c < (g + 1) * D; ++c) spread += (s1[c] - group_mean) * (s1[c] - group_mean);
    mean[g] = group_mean;
    rstd[g] = rstd_of(m2 + static_cast<M>(S) * spread, S * D, cfg.eps);
  }
}

// NOTE: [prefetch the next unit]
// The kernels work in units read twice: a channels-first group's run (D * S
// values, contiguous) or a channels-last sample. The reduction pass reads the
// unit from memory, and the elementwise pass rereads it from cache while it
// streams its output out, so a thread alternates between a phase that mostly
// reads memory and one that mostly writes it. While the elementwise pass
// runs, it prefetches the next unit, which lies right after the current one
// in both layouts (the next group's run; the next sample), so the next
// reduction pass finds it in cache. Only units of up to a limit are
// prefetched, so that the current and the next one fit in cache together:
//   * the forward reads one input: units of up to 256 KB, a quarter of L2;
//   * the backward rereads two inputs, x and dy, and gained only where both
//     fit in half of L1 (16 KB); above that it lost.
//
// Measured on the 2-core Zen 4 VM, float32, cache scrubbed before each call,
// medians of 60-80 calls interleaved with the prefetch off:
//   forward (64, 256, 14, 14), 6 KB units: NCHW 1 thread 1.47 -> 0.98 ms,
//     2 threads 0.85 -> 0.63-0.76 ms; NHWC (200 KB samples), 2 threads
//     0.99 -> 0.83 ms;
//   forward (32, 64, 56, 56) NCHW, 25 KB units, 2 threads: 1.46-1.58 ->
//     1.22-1.28 ms; NHWC (800 KB samples; prefetching only their first
//     256 KB made no difference): not prefetched;
//   backward (64, 256, 14, 14) NCHW, 12.5 KB of x and dy: 1 thread 2.20 ->
//     2.04-2.08 ms, 2 threads 1.23-1.36 -> 1.15-1.29 ms;
//   backward (32, 64, 56, 56) NCHW, 50 KB: 1 thread 3.22-3.44 -> 3.57-3.66 ms
//     (2 threads no change), hence the backward's limit.
// LayerNorm rows are not prefetched: the hardware prefetchers already follow
// them (no change at (4096, 768)). The last unit of a thread's block
// prefetches the first of the next block: one unit of extra reads per thread.
constexpr int64_t kPrefetchForwardBytes = 256 << 10;
constexpr int64_t kPrefetchBackwardBytes = 16 << 10;

// The prefetch distance, in elements, for units of `unit` elements of each of
// `inputs` inputs, prefetched only up to `limit` bytes in all.
template <typename scalar_t>
inline int64_t next_unit_distance(int64_t unit, int inputs, int64_t limit) {
  return inputs * unit * static_cast<int64_t>(sizeof(scalar_t)) <= limit ? unit : 0;
}

// ---------------------------------------------------------------- shared step 2
// y = act(x * scale_c + shift_c): the normalization and affine folded per
// channel, for the channels of group g (so the loop has no division and
// vectorizes).
template <typename M>
void affine_coefficients(const GroupNormConfig& cfg, const GroupNormSample& s, int64_t g, M* scale,
                         M* shift) {
  const M* gamma = static_cast<const M*>(s.gamma);
  const M* beta = static_cast<const M*>(s.beta);
  const M mean = static_cast<const M*>(s.mean)[g];
  const M rstd = static_cast<const M*>(s.rstd)[g];
  const int64_t D = cfg.C / cfg.G;
  for (int64_t c = g * D; c < (g + 1) * D; ++c) {
    scale[c] = rstd * (gamma != nullptr ? gamma[c] : M(1));
    shift[c] = (beta != nullptr ? beta[c] : M(0)) - mean * scale[c];
  }
}

// ---------------------------------------------------------------- forward
template <typename scalar_t, NormActivation ACT>
void forward(const GroupNormConfig& cfg, const GroupNormSample& s) {
  using M = typename Types<scalar_t>::M;
  const scalar_t* x = static_cast<const scalar_t*>(s.x);
  scalar_t* y = static_cast<scalar_t*>(s.out);
  M* mean = static_cast<M*>(s.mean);
  M* rstd = static_cast<M*>(s.rstd);
  M* scratch = static_cast<M*>(s.scratch);
  M* scale = scratch;
  M* shift = scratch + cfg.C;
  const int64_t C = cfg.C, S = cfg.S, D = C / cfg.G;

  auto normalize = [](const auto& a, const auto& b) {
    return [a, b](int64_t i, auto v, auto) {
      using T = decltype(v);
      return Act<ACT>::fwd(v * a.template at<T>(i) + b.template at<T>(i));
    };
  };
  if (cfg.channels_last) {
    channels_last_stats(cfg, x, mean, rstd, scratch);
    for (int64_t g = 0; g < cfg.G; ++g) affine_coefficients(cfg, s, g, scale, shift);
    const auto fn = normalize(PerElement<M>{scale}, PerElement<M>{shift});
    const int64_t ahead = next_unit_distance<scalar_t>(C * S, 1, kPrefetchForwardBytes);
    for (int64_t p = 0; p < S; ++p) {
      map_run<scalar_t>(cfg.stream, x + p * C, nullptr, y + p * C, C, fn, ahead);
    }
    return;
  }
  // Channels first, a group at a time: a group's D planes are one contiguous
  // run, normalized right after its statistics pass while it is still in
  // L1/L2, rather than after every group's (a sample can outgrow L2).
  const int64_t ahead = next_unit_distance<scalar_t>(D * S, 1, kPrefetchForwardBytes);
  channels_first_stats(cfg, x, mean, rstd, [&](int64_t g) {
    affine_coefficients(cfg, s, g, scale, shift);
    for (int64_t c = g * D; c < (g + 1) * D; ++c) {
      map_run<scalar_t>(cfg.stream, x + c * S, nullptr, y + c * S, S,
                        normalize(Uniform<M>{scale[c]}, Uniform<M>{shift[c]}), ahead);
    }
  });
}

// ---------------------------------------------------------------- backward
// With z = x * scale + shift and dz = act'(z) * dy, per channel
//   a_c = sum dz,  b_c = sum dz * (x - mean_g),
// and then, with L = D * S elements per group,
//   dbeta_c  = sum_n a_c,   dgamma_c = sum_n rstd_g * b_c,
//   dx = dz * rstd_g * gamma_c + (x - mean_g) * q_g + r_g,
//   q_g = -rstd_g^3 / L * sum_c gamma_c b_c,   r_g = -rstd_g / L * sum_c gamma_c a_c.
// Centring on the saved mean in the reduction keeps q_g free of the
// cancellation that sum dz * x - mean * sum dz would suffer.
template <typename scalar_t, NormActivation ACT>
void backward(const GroupNormConfig& cfg, const GroupNormSample& s) {
  using M = typename Types<scalar_t>::M;
  const scalar_t* x = static_cast<const scalar_t*>(s.x);
  const scalar_t* dy = static_cast<const scalar_t*>(s.dy);
  scalar_t* dx = static_cast<scalar_t*>(s.out);
  const M* gamma = static_cast<const M*>(s.gamma);
  const M* mean = static_cast<const M*>(s.mean);
  const M* rstd = static_cast<const M*>(s.rstd);
  const int64_t C = cfg.C, S = cfg.S, D = C / cfg.G;
  M* scratch = static_cast<M*>(s.scratch);
  M* scale = scratch;          // of the forward's affine, to recompute z
  M* shift = scratch + C;
  M* mean_c = scratch + 2 * C;  // mean of channel c's group
  M* a = scratch + 3 * C;       // then rstd_g * gamma_c
  M* b = scratch + 4 * C;       // then q_g
  M* r = scratch + 5 * C;

  if (ACT != NormActivation::None) {
    for (int64_t g = 0; g < cfg.G; ++g) affine_coefficients(cfg, s, g, scale, shift);
  }
  for (int64_t g = 0; g < cfg.G; ++g) {
    for (int64_t c = g * D; c < (g + 1) * D; ++c) mean_c[c] = mean[g];
  }

  // The dz of one element, from x, dy and the channel's coefficients.
  auto grad_z = [](const auto& sc, const auto& sh) {
    return [sc, sh](int64_t i, auto v, auto g) {
      using T = decltype(v);
      if constexpr (ACT == NormActivation::None) {
        return g;
      } else {
        return Act<ACT>::grad(v * sc.template at<T>(i) + sh.template at<T>(i), g);
      }
    };
  };

  // Step 2 of group g: weight gradients and the per-channel coefficients of dx.
  M* dgamma = static_cast<M*>(s.dgamma);
  M* dbeta = static_cast<M*>(s.dbeta);
  const M inv_l = M(1) / static_cast<M>(D * S);
  auto coefficients = [&](int64_t g) {
    M sum_a = 0, sum_b = 0;
    for (int64_t c = g * D; c < (g + 1) * D; ++c) {
      const M w = gamma != nullptr ? gamma[c] : M(1);
      sum_a += w * a[c];
      sum_b += w * b[c];
      if (dgamma != nullptr) dgamma[c] += rstd[g] * b[c];
      if (dbeta != nullptr) dbeta[c] += a[c];
    }
    const M q = -rstd[g] * rstd[g] * rstd[g] * inv_l * sum_b;
    const M rg = -rstd[g] * inv_l * sum_a;
    for (int64_t c = g * D; c < (g + 1) * D; ++c) {
      a[c] = rstd[g] * (gamma != nullptr ? gamma[c] : M(1));
      b[c] = q;
      r[c] = rg;
    }
  };
  auto input_grad = [&grad_z](const auto& sc, const auto& sh, const auto& p, const auto& m,
                              const auto& q, const auto& rr) {
    const auto dz_of = grad_z(sc, sh);
    return [=](int64_t i, auto v, auto g) {
      using T = decltype(v);
      const T dz = dz_of(i, v, g);
      return dz * p.template at<T>(i) + (v - m.template at<T>(i)) * q.template at<T>(i) +
             rr.template at<T>(i);
    };
  };

  if (cfg.channels_last) {
    // Pass 1: a_c and b_c, down the rows. Without an activation dz = dy:
    // the column sums of sum dy and sum dy * (x - mean).
    if constexpr (ACT == NormActivation::None) {
      channels_last_sums<true>(x, dy, mean_c, C, S, scratch, a, b);
    } else {
      for (int64_t c = 0; c < C; ++c) a[c] = b[c] = M(0);
      const auto dz_of = grad_z(PerElement<M>{scale}, PerElement<M>{shift});
      const PerElement<M> m{mean_c};
      for (int64_t p = 0; p < S; ++p) {
        map_elements<scalar_t>(x + p * C, dy + p * C, nullptr, C, [&](int64_t c, auto v, auto g) {
          using T = decltype(v);
          const T dz = dz_of(c, v, g);
          add_pair_at(a, b, c, dz, T(v - m.template at<T>(c)));
          return v;
        });
      }
    }
    for (int64_t g = 0; g < cfg.G; ++g) coefficients(g);
    // Pass 2: dx.
    const auto fn = input_grad(PerElement<M>{scale}, PerElement<M>{shift}, PerElement<M>{a},
                               PerElement<M>{mean_c}, PerElement<M>{b}, PerElement<M>{r});
    const int64_t ahead = next_unit_distance<scalar_t>(C * S, 2, kPrefetchBackwardBytes);
    for (int64_t p = 0; p < S; ++p) {
      map_run<scalar_t>(cfg.stream, x + p * C, dy + p * C, dx + p * C, C, fn, ahead);
    }
    return;
  }
  const int64_t ahead = next_unit_distance<scalar_t>(D * S, 2, kPrefetchBackwardBytes);
  // Channels first, a group at a time, as in the forward: dx of a group
  // needs only that group's sums, so pass 2 re-reads x and dy from L1/L2
  // right after pass 1 rather than after the whole sample.
  for (int64_t g = 0; g < cfg.G; ++g) {
    for (int64_t c = g * D; c < (g + 1) * D; ++c) {  // pass 1: a_c and b_c
      const auto dz_of = grad_z(Uniform<M>{scale[c]}, Uniform<M>{shift[c]});
      const M m = mean_c[c];
      const auto sums = sum_elements<2, scalar_t>(x + c * S, dy + c * S, S, [&](int64_t i, auto v, auto gv) {
        using T = decltype(v);
        const T dz = dz_of(i, v, gv);
        return std::array{dz, T(dz * (v - T(m)))};
      });
      a[c] = sums[0];
      b[c] = sums[1];
    }
    coefficients(g);
    for (int64_t c = g * D; c < (g + 1) * D; ++c) {  // pass 2: dx
      map_run<scalar_t>(
          cfg.stream, x + c * S, dy + c * S, dx + c * S, S,
          input_grad(Uniform<M>{scale[c]}, Uniform<M>{shift[c]}, Uniform<M>{a[c]},
                     Uniform<M>{mean_c[c]}, Uniform<M>{b[c]}, Uniform<M>{r[c]}), ahead);
    }
  }
}

// ---------------------------------------------------------------- rows
// A sample that is one row of one group (S = 1, G = 1: LayerNorm, and
// GroupNorm(1) on (N, C) input). Its statistics are two scalars, so the
// per-channel coefficient arrays of the general path, each a pass over C
// values per row as long as the row itself, are folded into the element
// loops: gamma and beta are read directly.

// Calls fn(g, b) with gamma and beta as PerElement views, or as the Uniform
// 1 and 0 that stand for absent parameters.
template <typename M, typename Fn>
inline void with_params(const M* gamma, const M* beta, const Fn& fn) {
  auto with_beta = [&](const auto& g) {
    if (beta != nullptr) {
      fn(g, PerElement<M>{beta});
    } else {
      fn(g, Uniform<M>{M(0)});
    }
  };
  if (gamma != nullptr) {
    with_beta(PerElement<M>{gamma});
  } else {
    with_beta(Uniform<M>{M(1)});
  }
}

// z = (x - mean) * rstd * gamma + beta of element i of a row (or of the
// vector of lanes starting there): the forward's value, and what the backward
// recomputes to differentiate an activation.
template <typename T, typename M, typename Gamma, typename Beta>
inline T row_affine(const T& v, int64_t i, M mu, M r, const Gamma& gamma, const Beta& beta) {
  return (v - T(mu)) * (T(r) * gamma.template at<T>(i)) + beta.template at<T>(i);
}

template <typename scalar_t, NormActivation ACT>
void forward_row(const GroupNormConfig& cfg, const GroupNormSample& s) {
  using M = typename Types<scalar_t>::M;
  const scalar_t* x = static_cast<const scalar_t*>(s.x);
  M* mean = static_cast<M*>(s.mean);
  M* rstd = static_cast<M*>(s.rstd);
  M m2;
  run_moments(x, cfg.C, mean[0], m2);
  rstd[0] = rstd_of(m2, cfg.C, cfg.eps);
  const M mu = mean[0], r = rstd[0];
  with_params(static_cast<const M*>(s.gamma), static_cast<const M*>(s.beta),
              [&](const auto& gamma, const auto& beta) {
                map_run<scalar_t>(cfg.stream, x, nullptr, static_cast<scalar_t*>(s.out), cfg.C,
                                  [&](int64_t i, auto v, auto) {
                                    return Act<ACT>::fwd(row_affine(v, i, mu, r, gamma, beta));
                                  });
              });
}

// The backward of one row, with the general path's formulas at D = C, S = 1:
// pass 1 sums a = sum dz * gamma and b = sum dz * gamma * (x - mean) and adds
// the row's dgamma and dbeta; pass 2 writes dx.
template <typename scalar_t, NormActivation ACT>
void backward_row(const GroupNormConfig& cfg, const GroupNormSample& s) {
  using M = typename Types<scalar_t>::M;
  const scalar_t* x = static_cast<const scalar_t*>(s.x);
  const scalar_t* dy = static_cast<const scalar_t*>(s.dy);
  M* dgamma = static_cast<M*>(s.dgamma);
  M* dbeta = static_cast<M*>(s.dbeta);
  const M mu = static_cast<const M*>(s.mean)[0], r = static_cast<const M*>(s.rstd)[0];
  with_params(static_cast<const M*>(s.gamma), static_cast<const M*>(s.beta),
              [&](const auto& gamma, const auto& beta) {
    // dz of one element, recomputing z only when there is an activation.
    auto dz_of = [&](int64_t i, auto v, auto g) {
      if constexpr (ACT == NormActivation::None) {
        return g;
      } else {
        return Act<ACT>::grad(row_affine(v, i, mu, r, gamma, beta), g);
      }
    };
    const auto sums = sum_elements<2, scalar_t>(x, dy, cfg.C, [&](int64_t i, auto v, auto g) {
      using T = decltype(v);
      const T dz = dz_of(i, v, g);
      const T centred = v - T(mu);
      const T dzw = dz * gamma.template at<T>(i);
      if (dgamma != nullptr) add_at(dgamma, i, dz * centred * T(r));
      if (dbeta != nullptr) add_at(dbeta, i, dz);
      return std::array{dzw, T(dzw * centred)};
    });
    const M inv_c = M(1) / static_cast<M>(cfg.C);
    const M q = -r * r * r * inv_c * sums[1];
    const M rr = -r * inv_c * sums[0];
    map_run<scalar_t>(cfg.stream, x, dy, static_cast<scalar_t*>(s.out), cfg.C,
                      [&](int64_t i, auto v, auto g) {
                        using T = decltype(v);
                        const T dz = dz_of(i, v, g);
                        return dz * (gamma.template at<T>(i) * T(r)) + (v - T(mu)) * T(q) + T(rr);
                      });
  });
}

inline bool is_row(const GroupNormConfig& cfg) {
  return cfg.S == 1 && cfg.G == 1;
}

// ---------------------------------------------------------------- dispatch
template <typename scalar_t, NormActivation ACT>
struct Forward {
  static void run(const GroupNormConfig& cfg, const GroupNormSample& s) {
    if (is_row(cfg)) {
      forward_row<scalar_t, ACT>(cfg, s);
    } else {
      forward<scalar_t, ACT>(cfg, s);
    }
  }
};
template <typename scalar_t, NormActivation ACT>
struct Backward {
  static void run(const GroupNormConfig& cfg, const GroupNormSample& s) {
    if (is_row(cfg)) {
      backward_row<scalar_t, ACT>(cfg, s);
    } else {
      backward<scalar_t, ACT>(cfg, s);
    }
  }
};

template <template <typename, NormActivation> class Pass, typename scalar_t>
void for_activation(const GroupNormConfig& cfg, const GroupNormSample& s) {
  switch (cfg.activation) {
    case NormActivation::ReLU: return Pass<scalar_t, NormActivation::ReLU>::run(cfg, s);
    case NormActivation::SiLU: return Pass<scalar_t, NormActivation::SiLU>::run(cfg, s);
    default: return Pass<scalar_t, NormActivation::None>::run(cfg, s);
  }
}

// The op validates dtypes before it picks a kernel. Nothing here throws, so
// that this ISA-specific TU emits no shared (weak) c10 error symbols.
template <template <typename, NormActivation> class Pass>
void for_dtype(const GroupNormConfig& cfg, const GroupNormSample& s) {
  switch (cfg.dtype) {
    case c10::ScalarType::Float: return for_activation<Pass, float>(cfg, s);
    case c10::ScalarType::Double: return for_activation<Pass, double>(cfg, s);
    case c10::ScalarType::BFloat16: return for_activation<Pass, c10::BFloat16>(cfg, s);
    case c10::ScalarType::Half: return for_activation<Pass, c10::Half>(cfg, s);
    default: return;
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

GroupNormKernelFn const FASTOPT_ISA_SYMBOL(group_norm_fwd_kernel) = &CPU_CAPABILITY::for_dtype<CPU_CAPABILITY::Forward>;
GroupNormKernelFn const FASTOPT_ISA_SYMBOL(group_norm_bwd_kernel) = &CPU_CAPABILITY::for_dtype<CPU_CAPABILITY::Backward>;

}  // namespace fastopt::cpu
