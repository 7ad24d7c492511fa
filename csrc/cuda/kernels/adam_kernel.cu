// The Adam/AdamW functor for the multi-tensor-apply driver, and its launch.
// The per-element math is fastopt::adam_update, shared with the CPU kernels.
#include "cuda/kernels/adam_kernel.h"

#include "common/adam_math.h"
#include "cuda/kernels/multi_tensor_apply.cuh"

namespace fastopt::cuda {
namespace {

// List slots, in the order of AdamLaunch.
enum AdamList : int { kParam = 0, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq };

template <typename T, AdamMode MODE, bool AMSGRAD>
struct AdamFunctor {
  using storage_t = T;
  static constexpr int kDepth = AMSGRAD ? 5 : 4;
  // Lists every step writes; the gradient is written only when unscaling.
  static constexpr uint32_t kStateLists = (1u << kParam) | (1u << kExpAvg) | (1u << kExpAvgSq) |
                                          (AMSGRAD ? 1u << kMaxExpAvgSq : 0u);

  double lr;
  const float* lr_ptr;
  double beta1;
  double beta2;
  double weight_decay;
  double eps;
  const float* grad_scale;
  const float* found_inf;
  bool maximize;

  __device__ void operator()(const Chunk<T, kDepth>& chunk, const float* step) const {
    using M = opmath_t<T>;
    // Before for_each, so a skipped step adds nothing to the update norms; the
    // whole block takes this return, as NOTE: [update norms] requires.
    if (found_inf != nullptr && *found_inf != 0.f) return;
    // Bias corrections use the step counter that increment_steps has already
    // advanced; see NOTE: [step counters].
    const AdamCoeffs<M> coeffs(make_adam_scalars<M>(lr_ptr != nullptr ? *lr_ptr : lr, beta1, beta2,
                                                    weight_decay, eps, *step));
    const bool has_weight_decay = weight_decay != 0.0;
    const bool unscale = grad_scale != nullptr;
    const M scale = unscale ? static_cast<M>(*grad_scale) : M(1);
    // torch's fused path stores the unscaled gradient, as GradScaler.unscale_ would.
    const uint32_t written = kStateLists | (unscale ? 1u << kGrad : 0u);

    chunk.for_each(written, [&](M (&v)[kDepth]) {
      if (unscale) v[kGrad] = v[kGrad] / scale;
      M* max_exp_avg_sq = nullptr;
      if constexpr (AMSGRAD) max_exp_avg_sq = &v[kMaxExpAvgSq];
      adam_update<MODE, M>(v[kParam], v[kGrad], v[kExpAvg], v[kExpAvgSq], max_exp_avg_sq, coeffs,
                           maximize, has_weight_decay);
    });
  }
};

template <typename T, AdamMode MODE, bool AMSGRAD>
void launch_functor(const AdamLaunch& l, cudaStream_t stream) {
  using Functor = AdamFunctor<T, MODE, AMSGRAD>;
  const Functor functor{l.lr,  l.lr_ptr,     l.beta1,     l.beta2,   l.weight_decay,
                        l.eps, l.grad_scale, l.found_inf, l.maximize};
  void* const* const lists[] = {l.params, l.grads, l.exp_avgs, l.exp_avg_sqs, l.max_exp_avg_sqs};
  multi_tensor_apply(make_tensor_lists<Functor::kDepth>(lists, l.numels, l.steps, l.update_norms,
                                                       l.num_tensors),
                     functor, stream);
}

template <typename T>
void launch_dtype(const AdamLaunch& l, cudaStream_t stream) {
  if (l.adamw) {
    l.amsgrad ? launch_functor<T, AdamMode::AdamW, true>(l, stream)
              : launch_functor<T, AdamMode::AdamW, false>(l, stream);
  } else {
    l.amsgrad ? launch_functor<T, AdamMode::Adam, true>(l, stream)
              : launch_functor<T, AdamMode::Adam, false>(l, stream);
  }
}

}  // namespace

void launch_adam(const AdamLaunch& l, cudaStream_t stream) {
  if (l.num_tensors == 0) return;
  increment_steps(l.steps, l.num_tensors, l.found_inf, stream);
  dispatch_dtype(l.dtype, [&](auto storage) { launch_dtype<typename decltype(storage)::type>(l, stream); });
}

}  // namespace fastopt::cuda
