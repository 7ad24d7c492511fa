// The Adam/AdamW functor for the multi-tensor-apply driver, and its launch.
// The per-element math is fastopt::adam_update, shared with the CPU kernels.
#include "cuda/kernels/adam_kernel.h"

#include "common/adam_math.h"
#include "cuda/kernels/optimizer_functor.cuh"

namespace fastopt::cuda {
namespace {

// List slots, in the order of AdamLaunch.
enum AdamList : int { kParam = 0, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq };
// Columns of the hyperparameter table.
enum AdamColumn : int { kLr = 0, kBeta1, kBeta2, kWeightDecay, kEps, kColumns };

template <typename S, AdamMode MODE, bool AMSGRAD>
struct AdamFunctor {
  using storage_t = S;
  static constexpr int kDepth = AMSGRAD ? 5 : 4;
  // Lists every step writes; the gradient is written only when unscaling.
  static constexpr uint32_t kStateLists = (1u << kParam) | (1u << kExpAvg) | (1u << kExpAvgSq) |
                                          (AMSGRAD ? 1u << kMaxExpAvgSq : 0u);

  StepScalars scalars;
  double beta1;
  double beta2;
  double weight_decay;
  double eps;
  bool maximize;

  __device__ void operator()(const Chunk<S, kDepth>& chunk, const float* step) const {
    using M = storage_opmath_t<S>;
    // Before for_each, so a skipped step adds nothing to the update norms.
    if (scalars.skipped()) return;
    double h[kColumns] = {0.0, beta1, beta2, weight_decay, eps};
    scalars.read(chunk.tensor, h);
    // Bias corrections use the step counter that increment_steps has already
    // advanced; see NOTE: [step counters].
    const AdamCoeffs<M> coeffs(
        make_adam_scalars<M>(h[kLr], h[kBeta1], h[kBeta2], h[kWeightDecay], h[kEps], *step));
    const bool has_weight_decay = h[kWeightDecay] != 0.0;
    const bool unscale = scalars.unscale();
    const M scale = scalars.grad_divisor<M>();
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

template <typename S, AdamMode MODE, bool AMSGRAD>
void launch_functor(const AdamLaunch& l, cudaStream_t stream) {
  using Functor = AdamFunctor<S, MODE, AMSGRAD>;
  const Functor functor{StepScalars::of(l.common), l.beta1, l.beta2, l.weight_decay, l.eps,
                        l.maximize};
  auto lists = optimizer_lists<Functor::kDepth>(l.common);
  lists.ptrs[kExpAvg] = l.exp_avgs;
  lists.ptrs[kExpAvgSq] = l.exp_avg_sqs;
  if constexpr (AMSGRAD) lists.ptrs[kMaxExpAvgSq] = l.max_exp_avg_sqs;
  multi_tensor_apply(lists, functor, stream);
}

template <typename S>
void launch_variant(const AdamLaunch& l, cudaStream_t stream) {
  if (l.adamw) {
    l.amsgrad ? launch_functor<S, AdamMode::AdamW, true>(l, stream)
              : launch_functor<S, AdamMode::AdamW, false>(l, stream);
  } else {
    l.amsgrad ? launch_functor<S, AdamMode::Adam, true>(l, stream)
              : launch_functor<S, AdamMode::Adam, false>(l, stream);
  }
}

}  // namespace

void launch_adam(const AdamLaunch& l, cudaStream_t stream) {
  launch_optimizer(l.common, stream, [&](auto storage) {
    launch_variant<typename decltype(storage)::type>(l, stream);
  });
}

}  // namespace fastopt::cuda
