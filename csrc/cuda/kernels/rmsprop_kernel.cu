// The RMSprop functor for the multi-tensor-apply driver, and its launch.
// The per-element math is fastopt::rmsprop_update, shared with the CPU kernels.
#include "cuda/kernels/rmsprop_kernel.h"

#include "common/rmsprop_math.h"
#include "cuda/kernels/optimizer_functor.cuh"

namespace fastopt::cuda {
namespace {

// Columns of the hyperparameter table.
enum RMSpropColumn : int { kLr = 0, kAlpha, kEps, kWeightDecay, kMomentumColumn, kColumns };

// List slots: param, grad and square_avg always; grad_avg and momentum_buffer
// only in the variants that keep them, so no chunk loads an unused list.
template <typename S, bool CENTERED, bool MOMENTUM>
struct RMSpropFunctor {
  using storage_t = S;
  static constexpr int kParam = 0, kGrad = kGradList, kSquareAvg = 2;
  static constexpr int kGradAvg = 3;              // valid if CENTERED
  static constexpr int kMomentum = 3 + CENTERED;  // valid if MOMENTUM
  static constexpr int kDepth = 3 + CENTERED + MOMENTUM;
  // Lists every step writes; the gradient is written only when unscaling.
  static constexpr uint32_t kStateLists = (1u << kParam) | (1u << kSquareAvg) |
                                          (CENTERED ? 1u << kGradAvg : 0u) |
                                          (MOMENTUM ? 1u << kMomentum : 0u);

  StepScalars scalars;
  double alpha;
  double eps;
  double weight_decay;
  double momentum;
  bool maximize;

  // RMSprop counts steps (for torch's state_dict) but never reads them.
  __device__ void operator()(const Chunk<S, kDepth>& chunk, const float* /*step*/) const {
    using M = storage_opmath_t<S>;
    // Before for_each, so a skipped step adds nothing to the update norms.
    if (scalars.skipped()) return;
    double h[kColumns] = {0.0, alpha, eps, weight_decay, momentum};
    scalars.read(chunk.tensor, h);
    const RMSpropCoeffs<M> coeffs(make_rmsprop_scalars<M>(h[kLr], h[kAlpha], h[kEps],
                                                          h[kWeightDecay], h[kMomentumColumn]));
    const bool has_weight_decay = h[kWeightDecay] != 0.0;
    const bool unscale = scalars.unscale();
    const M scale = scalars.grad_divisor<M>();
    // torch's fused optimizers store the unscaled gradient, as GradScaler.unscale_ would.
    const uint32_t written = kStateLists | (unscale ? 1u << kGrad : 0u);

    chunk.for_each(written, [&](M (&v)[kDepth]) {
      if (unscale) v[kGrad] = v[kGrad] / scale;
      M* grad_avg = nullptr;
      M* momentum_buffer = nullptr;
      if constexpr (CENTERED) grad_avg = &v[kGradAvg];
      if constexpr (MOMENTUM) momentum_buffer = &v[kMomentum];
      rmsprop_update<CENTERED, MOMENTUM, M>(v[kParam], v[kGrad], v[kSquareAvg], grad_avg,
                                            momentum_buffer, coeffs, maximize, has_weight_decay);
    });
  }
};

template <typename S, bool CENTERED, bool MOMENTUM>
void launch_functor(const RMSpropLaunch& l, cudaStream_t stream) {
  using Functor = RMSpropFunctor<S, CENTERED, MOMENTUM>;
  const Functor functor{StepScalars::of(l.common), l.alpha, l.eps, l.weight_decay, l.momentum,
                        l.maximize};
  auto lists = optimizer_lists<Functor::kDepth>(l.common);
  lists.ptrs[Functor::kSquareAvg] = l.square_avgs;
  if constexpr (CENTERED) lists.ptrs[Functor::kGradAvg] = l.grad_avgs;
  if constexpr (MOMENTUM) lists.ptrs[Functor::kMomentum] = l.momentum_buffers;
  multi_tensor_apply(lists, functor, stream);
}

template <typename S>
void launch_variant(const RMSpropLaunch& l, cudaStream_t stream) {
  const bool has_momentum = l.momentum > 0.0;
  if (l.centered) {
    has_momentum ? launch_functor<S, true, true>(l, stream)
                 : launch_functor<S, true, false>(l, stream);
  } else {
    has_momentum ? launch_functor<S, false, true>(l, stream)
                 : launch_functor<S, false, false>(l, stream);
  }
}

}  // namespace

void launch_rmsprop(const RMSpropLaunch& l, cudaStream_t stream) {
  launch_optimizer(l.common, stream, [&](auto storage) {
    launch_variant<typename decltype(storage)::type>(l, stream);
  });
}

}  // namespace fastopt::cuda
