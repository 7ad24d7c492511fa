// EMA (parameter averaging) CPU kernel. Compiled once per instruction set
// (see cpu/isa.h); every symbol here lives in the CPU_CAPABILITY namespace or
// carries its name.
#include "cpu/kernels/ema_kernel.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/math_ops.h"
#include "cpu/kernels/elementwise.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// List 0 is the shadow, the list the loop writes back.
enum EmaList : int { kShadow = 0, kParam, kDepth };

template <typename opmath_t>
struct EmaOp {
  Broadcast<LerpCoeffs, opmath_t> weight;

  template <typename T>
  FASTOPT_INLINE void operator()(T (&v)[kDepth]) const {
    v[kShadow] = lerp(v[kShadow], v[kParam], weight.template get<T>());
  }
};

template <typename scalar_t>
void ema_chunk(double weight, const EmaChunk& c) {
  using opmath_t = at::opmath_type<scalar_t>;
  const EmaOp<opmath_t> op{Broadcast<LerpCoeffs, opmath_t>(make_lerp_weight<opmath_t>(weight))};
  // The param list is only read: its bit is not set in `written`.
  scalar_t* const ptrs[kDepth] = {static_cast<scalar_t*>(c.lists[kShadow]),
                                  static_cast<scalar_t*>(c.lists[kParam])};
  for_each_element(ptrs, c.numel, 1u << kShadow, op, nullptr);
}

void ema_kernel_impl(c10::ScalarType dtype, double weight, const EmaChunk& c) {
  switch (dtype) {
    case c10::ScalarType::Float: return ema_chunk<float>(weight, c);
    case c10::ScalarType::Double: return ema_chunk<double>(weight, c);
    case c10::ScalarType::BFloat16: return ema_chunk<c10::BFloat16>(weight, c);
    case c10::ScalarType::Half: return ema_chunk<c10::Half>(weight, c);
    // The op validates dtypes before it picks a kernel; nothing here throws
    // (see adam_kernel.cpp).
    default: return;
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

EmaKernelFn const FASTOPT_ISA_SYMBOL(ema_kernel) = &CPU_CAPABILITY::ema_kernel_impl;

}  // namespace fastopt::cpu
