// Adam/AdamW CPU kernel. Compiled once per instruction set (see cpu/isa.h);
// every symbol here lives in the CPU_CAPABILITY namespace or carries its name.
#include "cpu/kernels/adam_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/kernels/vec_io.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

#if defined(CPU_CAPABILITY_DEFAULT)
constexpr bool kHasSimd = false;
#else
constexpr bool kHasSimd = true;
#endif

template <typename scalar_t, AdamMode MODE>
void adam_chunk(const AdamKernelConfig& cfg, const AdamScalars<double>& s64, const AdamChunk& c) {
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using Vec = typename IO::Vec;
  constexpr int K = IO::kVecs;

  auto* param = static_cast<scalar_t*>(c.param);
  auto* grad = static_cast<scalar_t*>(c.grad);
  auto* exp_avg = static_cast<scalar_t*>(c.exp_avg);
  auto* exp_avg_sq = static_cast<scalar_t*>(c.exp_avg_sq);
  auto* max_exp_avg_sq = static_cast<scalar_t*>(c.max_exp_avg_sq);
  const bool amsgrad = max_exp_avg_sq != nullptr;

  const AdamScalars<opmath_t> s = cast_scalars<opmath_t>(s64);
  const AdamCoeffs<Vec> vc(s);
  const AdamCoeffs<opmath_t> sc(s);
  const opmath_t scale = static_cast<opmath_t>(cfg.grad_scale);

  int64_t i = 0;
  // The baseline build has no SIMD Vectorized (its generic fallback is slower
  // than plain scalar code), so it leaves everything to the loop below, which
  // the compiler vectorizes with SSE2 where it can.
  const int64_t vector_end = kHasSimd ? c.numel - c.numel % IO::kBlock : 0;
  for (; i < vector_end; i += IO::kBlock) {
    Vec p[K], g[K], m[K], v[K], vmax[K];
    IO::load(param + i, p);
    IO::load(grad + i, g);
    IO::load(exp_avg + i, m);
    IO::load(exp_avg_sq + i, v);
    if (amsgrad) IO::load(max_exp_avg_sq + i, vmax);
    if (cfg.unscale_grad) {
      for (int k = 0; k < K; ++k) g[k] = g[k] / Vec(scale);
      IO::store(grad + i, g);
    }
    for (int k = 0; k < K; ++k) {
      adam_update<MODE>(p[k], g[k], m[k], v[k], amsgrad ? &vmax[k] : nullptr, vc, cfg.maximize,
                        cfg.has_weight_decay);
    }
    IO::store(param + i, p);
    IO::store(exp_avg + i, m);
    IO::store(exp_avg_sq + i, v);
    if (amsgrad) IO::store(max_exp_avg_sq + i, vmax);
  }
  // Scalar tail: fewer elements than one storage vector (or all of them, see above).
  for (; i < c.numel; ++i) {
    opmath_t p = param[i], g = grad[i], m = exp_avg[i], v = exp_avg_sq[i];
    opmath_t vmax = amsgrad ? opmath_t(max_exp_avg_sq[i]) : opmath_t(0);
    if (cfg.unscale_grad) {
      g = g / scale;
      grad[i] = static_cast<scalar_t>(g);
    }
    adam_update<MODE>(p, g, m, v, amsgrad ? &vmax : nullptr, sc, cfg.maximize,
                      cfg.has_weight_decay);
    param[i] = static_cast<scalar_t>(p);
    exp_avg[i] = static_cast<scalar_t>(m);
    exp_avg_sq[i] = static_cast<scalar_t>(v);
    if (amsgrad) max_exp_avg_sq[i] = static_cast<scalar_t>(vmax);
  }
}

template <typename scalar_t>
void adam_chunk_for_mode(const AdamKernelConfig& cfg, const AdamScalars<double>& s,
                         const AdamChunk& c) {
  if (cfg.adamw) {
    adam_chunk<scalar_t, AdamMode::AdamW>(cfg, s, c);
  } else {
    adam_chunk<scalar_t, AdamMode::Adam>(cfg, s, c);
  }
}

void adam_kernel_impl(const AdamKernelConfig& cfg, const AdamScalars<double>& s,
                      const AdamChunk& c) {
  switch (cfg.dtype) {
    case c10::ScalarType::Float: return adam_chunk_for_mode<float>(cfg, s, c);
    case c10::ScalarType::Double: return adam_chunk_for_mode<double>(cfg, s, c);
    case c10::ScalarType::BFloat16: return adam_chunk_for_mode<c10::BFloat16>(cfg, s, c);
    case c10::ScalarType::Half: return adam_chunk_for_mode<c10::Half>(cfg, s, c);
    // The op validates dtypes before it picks a kernel. Nothing here throws, so
    // that this ISA-specific TU emits no shared (weak) c10 error symbols.
    default: return;
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

AdamKernelFn const FASTOPT_ISA_SYMBOL(adam_kernel) = &CPU_CAPABILITY::adam_kernel_impl;

}  // namespace fastopt::cpu
