// BatchNorm CPU kernels (see batch_norm_kernel.h). Compiled once per
// instruction set (see cpu/isa.h); every symbol here lives in the
// CPU_CAPABILITY namespace or carries its name, and nothing throws.
#include "cpu/kernels/batch_norm_kernel.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/kernels/norm_loops.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using namespace norm;

// Partial sums are formed in the arithmetic type over at most this many
// elements of a plane (channels first; channels last: kSumRows in
// norm_loops.h), then added into double: float32 lanes summing a few hundred values keep ~1e-6
// relative error, however long the channel.
constexpr int64_t kRun = 4096;

// Software prefetch of [p, p + bytes) into L2 (not L1, which the data being
// summed occupies), one request per cache line. The
// hardware prefetchers follow one long stream well, but a channels-first
// channel is N short runs far apart (784 bytes at 14x14), each a new stream
// they must first detect; and one core's single stream stays well below the
// memory bandwidth without more requests in flight.
constexpr int64_t kLine = 64;
constexpr int64_t kPrefetchBytes = 4096;
inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += kLine) __builtin_prefetch(c + off, 0, 2);
}

// The two summands of one element: u and u * w for the chosen sums.
template <BatchNormSums SUMS, typename T>
inline void summands(const T& d, const T& g, T& u, T& w) {
  if constexpr (SUMS == BatchNormSums::Moments) {
    (void)g;
    u = d;
  } else {
    u = g;
  }
  w = d;
}

// Samples outer, channels inner: for a range of channels, each sample's
// planes of those channels are one contiguous run of memory, read in order.
// A single channel's planes lie C * S apart, so the plane after next is
// prefetched.
template <typename scalar_t, BatchNormSums SUMS>
void reduce_channels_first(const BatchNormConfig& cfg, const BatchNormReduceArgs& a,
                           int64_t begin, int64_t end) {
  using M = typename Types<scalar_t>::M;
  const scalar_t* x = static_cast<const scalar_t*>(a.x);
  const scalar_t* dy = static_cast<const scalar_t*>(a.dy);
  const M* center = static_cast<const M*>(a.center);
  const int64_t C = cfg.C, S = cfg.S;
  std::fill(a.sum1 + begin, a.sum1 + end, 0.0);
  std::fill(a.sum2 + begin, a.sum2 + end, 0.0);
  const bool strided = end - begin == 1;
  for (int64_t n = 0; n < cfg.N; ++n) {
    if (strided && n + 2 < cfg.N) {
      const int64_t ahead = ((n + 2) * C + begin) * S;
      const int64_t bytes = std::min<int64_t>(S * sizeof(scalar_t), kPrefetchBytes);
      prefetch(x + ahead, bytes);
      if (SUMS == BatchNormSums::Gradient) prefetch(dy + ahead, bytes);
    }
    for (int64_t c = begin; c < end; ++c) {
      const M k = center[c];
      const int64_t base = (n * C + c) * S;
      for (int64_t off = 0; off < S; off += kRun) {
        const int64_t len = std::min(kRun, S - off);
        const scalar_t* dyp = SUMS == BatchNormSums::Gradient ? dy + base + off : nullptr;
        const auto sums = sum_elements<2, scalar_t>(x + base + off, dyp, len, [&](int64_t, auto v, auto g) {
          using T = decltype(v);
          T u, w;
          summands<SUMS>(T(v - T(k)), g, u, w);
          return std::array{u, T(u * w)};
        });
        a.sum1[c] += static_cast<double>(sums[0]);
        a.sum2[c] += static_cast<double>(sums[1]);
      }
    }
  }
}

// Channels last: the column sums of norm::channel_sums_down_rows (NOTE:
// [channels-last reduction order] in norm_loops.h), with the scratch as its
// arithmetic-type partials.
template <typename scalar_t, BatchNormSums SUMS>
void reduce_channels_last(const BatchNormConfig& cfg, const BatchNormReduceArgs& a,
                          int64_t begin, int64_t end) {
  using M = typename Types<scalar_t>::M;
  channel_sums_down_rows<scalar_t, SUMS == BatchNormSums::Gradient>(
      static_cast<const scalar_t*>(a.x), static_cast<const scalar_t*>(a.dy),
      static_cast<const M*>(a.center), cfg.C, begin, end, static_cast<M*>(a.scratch), a.sum1, a.sum2);
}

// (x - k) * p + dy * q + r for coefficients that are per run (Uniform) or
// per element of a row (PerElement).
template <bool HAS_DY, typename Coef>
auto affine_fn(const Coef& k, const Coef& p, const Coef& q, const Coef& r) {
  return [k, p, q, r](int64_t i, auto v, auto g) {
    using T = decltype(v);
    const T z = (v - k.template at<T>(i)) * p.template at<T>(i) + r.template at<T>(i);
    if constexpr (HAS_DY) {
      return T(z + g * q.template at<T>(i));
    } else {
      (void)g;
      return z;
    }
  };
}

template <typename scalar_t, bool HAS_DY>
void affine(const BatchNormConfig& cfg, const BatchNormAffineArgs& a, int64_t begin, int64_t end) {
  using M = typename Types<scalar_t>::M;
  const scalar_t* x = static_cast<const scalar_t*>(a.x);
  const scalar_t* dy = static_cast<const scalar_t*>(a.dy);
  scalar_t* out = static_cast<scalar_t*>(a.out);
  const M* k = static_cast<const M*>(a.center);
  const M* p = static_cast<const M*>(a.p);
  const M* q = static_cast<const M*>(a.q);
  const M* r = static_cast<const M*>(a.r);
  const int64_t C = cfg.C;
  if (cfg.channels_last) {
    const auto fn = affine_fn<HAS_DY>(PerElement<M>{k}, PerElement<M>{p},
                                      PerElement<M>{HAS_DY ? q : p}, PerElement<M>{r});
    for (int64_t row = begin; row < end; ++row) {
      map_run<scalar_t>(a.stream, x + row * C, HAS_DY ? dy + row * C : nullptr, out + row * C, C, fn);
    }
  } else {
    const int64_t S = cfg.S;
    for (int64_t j = begin; j < end; ++j) {
      const int64_t c = j % C;
      const auto fn = affine_fn<HAS_DY>(Uniform<M>{k[c]}, Uniform<M>{p[c]},
                                        Uniform<M>{HAS_DY ? q[c] : M(0)}, Uniform<M>{r[c]});
      map_run<scalar_t>(a.stream, x + j * S, HAS_DY ? dy + j * S : nullptr, out + j * S, S, fn);
    }
  }
}

// ---------------------------------------------------------------- dispatch
template <typename scalar_t>
void reduce_for(const BatchNormConfig& cfg, const BatchNormReduceArgs& a, int64_t begin,
                int64_t end) {
  constexpr auto kMoments = BatchNormSums::Moments;
  constexpr auto kGradient = BatchNormSums::Gradient;
  if (cfg.channels_last) {
    return a.sums == kMoments ? reduce_channels_last<scalar_t, kMoments>(cfg, a, begin, end)
                              : reduce_channels_last<scalar_t, kGradient>(cfg, a, begin, end);
  }
  return a.sums == kMoments ? reduce_channels_first<scalar_t, kMoments>(cfg, a, begin, end)
                            : reduce_channels_first<scalar_t, kGradient>(cfg, a, begin, end);
}

template <typename scalar_t>
void affine_for(const BatchNormConfig& cfg, const BatchNormAffineArgs& a, int64_t begin,
                int64_t end) {
  return a.dy != nullptr ? affine<scalar_t, true>(cfg, a, begin, end)
                         : affine<scalar_t, false>(cfg, a, begin, end);
}

// The op validates dtypes before it picks a kernel; nothing here throws.
void reduce(const BatchNormConfig& cfg, const BatchNormReduceArgs& a, int64_t begin, int64_t end) {
  switch (cfg.dtype) {
    case c10::ScalarType::Float: return reduce_for<float>(cfg, a, begin, end);
    case c10::ScalarType::Double: return reduce_for<double>(cfg, a, begin, end);
    case c10::ScalarType::BFloat16: return reduce_for<c10::BFloat16>(cfg, a, begin, end);
    case c10::ScalarType::Half: return reduce_for<c10::Half>(cfg, a, begin, end);
    default: return;
  }
}

void affine_map(const BatchNormConfig& cfg, const BatchNormAffineArgs& a, int64_t begin,
                int64_t end) {
  switch (cfg.dtype) {
    case c10::ScalarType::Float: return affine_for<float>(cfg, a, begin, end);
    case c10::ScalarType::Double: return affine_for<double>(cfg, a, begin, end);
    case c10::ScalarType::BFloat16: return affine_for<c10::BFloat16>(cfg, a, begin, end);
    case c10::ScalarType::Half: return affine_for<c10::Half>(cfg, a, begin, end);
    default: return;
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

BatchNormReduceFn const FASTOPT_ISA_SYMBOL(batch_norm_reduce_kernel) = &CPU_CAPABILITY::reduce;
BatchNormAffineFn const FASTOPT_ISA_SYMBOL(batch_norm_affine_kernel) = &CPU_CAPABILITY::affine_map;

}  // namespace fastopt::cpu
