// Adagrad CPU kernel. Compiled once per instruction set (see cpu/isa.h); every
// symbol here lives in the CPU_CAPABILITY namespace or carries its name, and
// nothing throws (see the note in adam_kernel.cpp).
#include "cpu/kernels/adagrad_kernel.h"

#include "cpu/kernels/elementwise.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// List slots, in the order of AdagradChunk.
enum AdagradList : int { kParam = 0, kGrad, kSum, kDepth };

template <typename opmath_t>
struct AdagradOp {
  Broadcast<AdagradCoeffs, opmath_t> coeffs;
  opmath_t grad_scale;
  bool unscale;
  bool maximize;
  bool has_weight_decay;

  template <typename T>
  FASTOPT_INLINE void operator()(T (&v)[kDepth]) const {
    if (unscale) v[kGrad] = v[kGrad] / T(grad_scale);
    adagrad_update(v[kParam], v[kGrad], v[kSum], coeffs.template get<T>(), maximize,
                   has_weight_decay);
  }
};

template <typename scalar_t>
void adagrad_chunk(const AdagradKernelConfig& cfg, const AdagradCoeffs<double>& s,
                   const AdagradChunk& c) {
  using opmath_t = opmath_of<scalar_t>;
  const AdagradOp<opmath_t> op{Broadcast<AdagradCoeffs, opmath_t>(s),
                               static_cast<opmath_t>(cfg.grad_scale), cfg.unscale_grad,
                               cfg.maximize, cfg.has_weight_decay};
  const uint32_t written = (1u << kParam) | (1u << kSum) | (cfg.unscale_grad ? 1u << kGrad : 0u);
  for_each_element<scalar_t, kDepth>(c, written, op);
}

void adagrad_kernel_impl(const AdagradKernelConfig& cfg, const AdagradCoeffs<double>& s,
                         const AdagradChunk& c) {
  dispatch_param_storage(cfg.dtype, c.storage, [&](auto storage) {
    adagrad_chunk<typename decltype(storage)::type>(cfg, s, c);
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

AdagradKernelFn const FASTOPT_ISA_SYMBOL(adagrad_kernel) = &CPU_CAPABILITY::adagrad_kernel_impl;

}  // namespace fastopt::cpu
