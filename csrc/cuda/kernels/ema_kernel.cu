// The EMA functor for the multi-tensor-apply driver, and its launch. The
// per-element math is fastopt::lerp, shared with the CPU kernel.
#include "cuda/kernels/ema_kernel.h"

#include "common/math_ops.h"
#include "cuda/kernels/multi_tensor_apply.cuh"

namespace fastopt::cuda {
namespace {

// List 0 is the shadow, the only list written.
enum EmaList : int { kShadow = 0, kParam };

template <typename T>
struct EmaFunctor {
  using storage_t = T;
  static constexpr int kDepth = 2;

  double weight;  // 1 - decay

  __device__ void operator()(const Chunk<T, kDepth>& chunk, const float* /*step*/) const {
    using M = opmath_t<T>;
    const LerpCoeffs<M> w(make_lerp_weight<M>(weight));
    chunk.for_each(1u << kShadow,
                   [&](M (&v)[kDepth]) { v[kShadow] = lerp(v[kShadow], v[kParam], w); });
  }
};

template <typename T>
void launch_functor(const EmaLaunch& l, cudaStream_t stream) {
  // 1 - decay in double, as Python computes the weight for torch._foreach_lerp_.
  const EmaFunctor<T> functor{1.0 - l.decay};
  // The driver's pointers are mutable, but the param list's bit is never set
  // in `written`, so params are only read.
  void* const* const lists[] = {l.shadow, const_cast<void* const*>(l.params)};
  static_assert(kShadow == 0 && kParam == 1, "lists are in the functor's order");
  multi_tensor_apply(make_tensor_lists<2>(lists, l.numels, nullptr, nullptr, l.num_tensors),
                     functor, stream);
}

}  // namespace

void launch_ema(const EmaLaunch& l, cudaStream_t stream) {
  dispatch_dtype(l.dtype, [&](auto storage) { launch_functor<typename decltype(storage)::type>(l, stream); });
}

}  // namespace fastopt::cuda
