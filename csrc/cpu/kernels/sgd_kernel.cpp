// SGD CPU kernel. Compiled once per instruction set (see cpu/isa.h); every
// symbol here lives in the CPU_CAPABILITY namespace or carries its name, and
// nothing throws (see the note in adam_kernel.cpp).
#include "cpu/kernels/sgd_kernel.h"

#include "cpu/kernels/elementwise.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// List slots, in the order of SgdChunk.
enum SgdList : int { kParam = 0, kGrad, kMomentumBuffer };

template <typename opmath_t, bool MOMENTUM>
struct SgdOp {
  Broadcast<SgdCoeffs, opmath_t> coeffs;
  SgdOptions options;
  opmath_t grad_scale;
  bool unscale;

  template <typename T>
  FASTOPT_INLINE void operator()(T (&v)[MOMENTUM ? 3 : 2]) const {
    if (unscale) v[kGrad] = v[kGrad] / T(grad_scale);
    T* momentum_buffer = nullptr;
    if constexpr (MOMENTUM) momentum_buffer = &v[kMomentumBuffer];
    sgd_update(v[kParam], v[kGrad], momentum_buffer, coeffs.template get<T>(), options);
  }
};

template <typename scalar_t, bool MOMENTUM>
void sgd_chunk(const SgdKernelConfig& cfg, const SgdCoeffs<double>& s, const SgdChunk& c) {
  using opmath_t = opmath_of<scalar_t>;
  const SgdOp<opmath_t, MOMENTUM> op{Broadcast<SgdCoeffs, opmath_t>(s), cfg.options,
                                     static_cast<opmath_t>(cfg.grad_scale), cfg.unscale_grad};
  const uint32_t written = (1u << kParam) | (MOMENTUM ? 1u << kMomentumBuffer : 0u) |
                           (cfg.unscale_grad ? 1u << kGrad : 0u);
  for_each_element<scalar_t, MOMENTUM ? 3 : 2>(c, written, op);
}

void sgd_kernel_impl(const SgdKernelConfig& cfg, const SgdCoeffs<double>& s, const SgdChunk& c) {
  dispatch_param_storage(cfg.dtype, c.storage, [&](auto storage) {
    using scalar_t = typename decltype(storage)::type;
    cfg.momentum ? sgd_chunk<scalar_t, true>(cfg, s, c) : sgd_chunk<scalar_t, false>(cfg, s, c);
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

SgdKernelFn const FASTOPT_ISA_SYMBOL(sgd_kernel) = &CPU_CAPABILITY::sgd_kernel_impl;

}  // namespace fastopt::cpu
