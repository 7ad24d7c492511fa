// Adam/AdamW CPU kernel. Compiled once per instruction set (see cpu/isa.h);
// every symbol here lives in the CPU_CAPABILITY namespace or carries its name.
#include "cpu/kernels/adam_kernel.h"

#include "cpu/kernels/elementwise.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// List slots, in the order of AdamChunk.
enum AdamList : int { kParam = 0, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq };

template <typename opmath_t, AdamMode MODE, bool AMSGRAD>
struct AdamOp {
  Broadcast<AdamCoeffs, opmath_t> coeffs;
  opmath_t grad_scale;
  bool unscale;
  bool maximize;
  bool has_weight_decay;

  template <typename T>
  FASTOPT_INLINE void operator()(T (&v)[AMSGRAD ? 5 : 4]) const {
    // torch's fused path stores the unscaled gradient, as GradScaler.unscale_ would.
    if (unscale) v[kGrad] = v[kGrad] / T(grad_scale);
    T* max_exp_avg_sq = nullptr;
    if constexpr (AMSGRAD) max_exp_avg_sq = &v[kMaxExpAvgSq];
    adam_update<MODE>(v[kParam], v[kGrad], v[kExpAvg], v[kExpAvgSq], max_exp_avg_sq,
                      coeffs.template get<T>(), maximize, has_weight_decay);
  }
};

template <typename scalar_t, AdamMode MODE, bool AMSGRAD>
void adam_chunk(const AdamKernelConfig& cfg, const AdamScalars<double>& s, const AdamChunk& c) {
  using opmath_t = opmath_of<scalar_t>;
  constexpr int kDepth = AMSGRAD ? 5 : 4;
  const AdamOp<opmath_t, MODE, AMSGRAD> op{
      Broadcast<AdamCoeffs, opmath_t>(cast_scalars<opmath_t>(s)),
      static_cast<opmath_t>(cfg.grad_scale), cfg.unscale_grad, cfg.maximize,
      cfg.has_weight_decay};
  const uint32_t written = (1u << kParam) | (1u << kExpAvg) | (1u << kExpAvgSq) |
                           (AMSGRAD ? 1u << kMaxExpAvgSq : 0u) |
                           (cfg.unscale_grad ? 1u << kGrad : 0u);
  for_each_element<scalar_t, kDepth>(c, written, op);
}

template <typename scalar_t>
void adam_chunk_for_variant(const AdamKernelConfig& cfg, const AdamScalars<double>& s,
                            const AdamChunk& c) {
  if (cfg.adamw) {
    cfg.amsgrad ? adam_chunk<scalar_t, AdamMode::AdamW, true>(cfg, s, c)
                : adam_chunk<scalar_t, AdamMode::AdamW, false>(cfg, s, c);
  } else {
    cfg.amsgrad ? adam_chunk<scalar_t, AdamMode::Adam, true>(cfg, s, c)
                : adam_chunk<scalar_t, AdamMode::Adam, false>(cfg, s, c);
  }
}

void adam_kernel_impl(const AdamKernelConfig& cfg, const AdamScalars<double>& s,
                      const AdamChunk& c) {
  dispatch_param_storage(cfg.dtype, c.storage, [&](auto storage) {
    adam_chunk_for_variant<typename decltype(storage)::type>(cfg, s, c);
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

AdamKernelFn const FASTOPT_ISA_SYMBOL(adam_kernel) = &CPU_CAPABILITY::adam_kernel_impl;

}  // namespace fastopt::cpu
