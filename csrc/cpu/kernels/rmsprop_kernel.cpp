// RMSprop CPU kernel. Compiled once per instruction set (see cpu/isa.h);
// every symbol here lives in the CPU_CAPABILITY namespace or carries its name.
#include "cpu/kernels/rmsprop_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/kernels/elementwise.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// List slots: param, grad and square_avg always; grad_avg and momentum_buffer
// follow only when the variant keeps them, so that the element loop never
// loads a list the math does not use.
template <bool CENTERED, bool MOMENTUM>
struct RMSpropLists {
  static constexpr int kParam = 0, kGrad = 1, kSquareAvg = 2;
  static constexpr int kGradAvg = 3;                // valid if CENTERED
  static constexpr int kMomentum = 3 + CENTERED;    // valid if MOMENTUM
  static constexpr int kDepth = 3 + CENTERED + MOMENTUM;
};

template <typename opmath_t, bool CENTERED, bool MOMENTUM>
struct RMSpropOp {
  using L = RMSpropLists<CENTERED, MOMENTUM>;
  Broadcast<RMSpropCoeffs, opmath_t> coeffs;
  opmath_t grad_scale;
  bool unscale;
  bool maximize;
  bool has_weight_decay;

  template <typename T>
  FASTOPT_INLINE void operator()(T (&v)[L::kDepth]) const {
    // As torch's fused optimizers do, store the unscaled gradient, as
    // GradScaler.unscale_ would have.
    if (unscale) v[L::kGrad] = v[L::kGrad] / T(grad_scale);
    T* grad_avg = nullptr;
    T* momentum_buffer = nullptr;
    if constexpr (CENTERED) grad_avg = &v[L::kGradAvg];
    if constexpr (MOMENTUM) momentum_buffer = &v[L::kMomentum];
    rmsprop_update<CENTERED, MOMENTUM>(v[L::kParam], v[L::kGrad], v[L::kSquareAvg], grad_avg,
                                       momentum_buffer, coeffs.template get<T>(), maximize,
                                       has_weight_decay);
  }
};

template <typename scalar_t, bool CENTERED, bool MOMENTUM>
void rmsprop_chunk(const RMSpropKernelConfig& cfg, const RMSpropChunk& c) {
  using opmath_t = opmath_of<scalar_t>;
  using L = RMSpropLists<CENTERED, MOMENTUM>;
  const RMSpropOp<opmath_t, CENTERED, MOMENTUM> op{
      Broadcast<RMSpropCoeffs, opmath_t>(make_rmsprop_scalars<opmath_t>(
          cfg.lr, cfg.alpha, cfg.eps, cfg.weight_decay, cfg.momentum)),
      static_cast<opmath_t>(cfg.grad_scale), cfg.unscale_grad, cfg.maximize,
      cfg.has_weight_decay};
  // The chunk's lists in the loop's order (param and grad first, as it requires).
  void* ptrs[L::kDepth];
  ptrs[L::kParam] = c.lists[0];
  ptrs[L::kGrad] = c.lists[1];
  ptrs[L::kSquareAvg] = c.lists[2];
  uint32_t written = (1u << L::kParam) | (1u << L::kSquareAvg) |
                     (cfg.unscale_grad ? 1u << L::kGrad : 0u);
  if constexpr (CENTERED) {
    ptrs[L::kGradAvg] = c.lists[3];
    written |= 1u << L::kGradAvg;
  }
  if constexpr (MOMENTUM) {
    ptrs[L::kMomentum] = c.lists[4];
    written |= 1u << L::kMomentum;
  }
  for_each_element<scalar_t>(ptrs, c.numel, written, op, c.norms,
                             RunStore{c.copy, c.storage, c.tensor, c.first});
}

template <typename scalar_t>
void rmsprop_chunk_for_variant(const RMSpropKernelConfig& cfg, const RMSpropChunk& c) {
  if (cfg.centered) {
    cfg.has_momentum ? rmsprop_chunk<scalar_t, true, true>(cfg, c)
                 : rmsprop_chunk<scalar_t, true, false>(cfg, c);
  } else {
    cfg.has_momentum ? rmsprop_chunk<scalar_t, false, true>(cfg, c)
                 : rmsprop_chunk<scalar_t, false, false>(cfg, c);
  }
}

void rmsprop_kernel_impl(const RMSpropKernelConfig& cfg, const RMSpropChunk& c) {
  dispatch_param_storage(cfg.dtype, c.storage, [&](auto storage) {
    rmsprop_chunk_for_variant<typename decltype(storage)::type>(cfg, c);
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

RMSpropKernelFn const FASTOPT_ISA_SYMBOL(rmsprop_kernel) = &CPU_CAPABILITY::rmsprop_kernel_impl;

}  // namespace fastopt::cpu
