// The Adagrad functor for the multi-tensor-apply driver, and its launch. The
// per-element math is fastopt::adagrad_update, shared with the CPU kernels.
#include "cuda/kernels/adagrad_kernel.h"

#include "common/adagrad_math.h"
#include "cuda/kernels/optimizer_functor.cuh"

namespace fastopt::cuda {
namespace {

// List slots, in the order of AdagradLaunch.
enum AdagradList : int { kParam = 0, kGrad, kSum, kDepth };
// Columns of the hyperparameter table.
enum AdagradColumn : int { kLr = 0, kLrDecay, kWeightDecay, kEps, kColumns };

template <typename S>
struct AdagradFunctor {
  using storage_t = S;
  static constexpr int kDepth = AdagradList::kDepth;

  StepScalars scalars;
  double lr_decay;
  double weight_decay;
  double eps;
  bool maximize;

  __device__ void operator()(const Chunk<S, kDepth>& chunk, const float* step) const {
    using M = storage_opmath_t<S>;
    // Before for_each, so a skipped step adds nothing to the update norms.
    if (scalars.skipped()) return;
    double h[kColumns] = {0.0, lr_decay, weight_decay, eps};
    scalars.read(chunk.tensor, h);
    // The decayed lr uses the step counter that increment_steps has already
    // advanced; see NOTE: [step counters].
    const AdagradCoeffs<M> coeffs(
        make_adagrad_coeffs(h[kLr], h[kLrDecay], h[kWeightDecay], h[kEps], *step));
    const bool has_weight_decay = h[kWeightDecay] != 0.0;
    const bool unscale = scalars.unscale();
    const M scale = scalars.grad_divisor<M>();
    // torch's fused path stores the unscaled gradient, as GradScaler.unscale_ would.
    const uint32_t written = (1u << kParam) | (1u << kSum) | (unscale ? 1u << kGrad : 0u);

    chunk.for_each(written, [&](M (&v)[kDepth]) {
      if (unscale) v[kGrad] = v[kGrad] / scale;
      adagrad_update<M>(v[kParam], v[kGrad], v[kSum], coeffs, maximize, has_weight_decay);
    });
  }
};

template <typename S>
void launch_functor(const AdagradLaunch& l, cudaStream_t stream) {
  using Functor = AdagradFunctor<S>;
  const Functor functor{StepScalars::of(l.common), l.lr_decay, l.weight_decay, l.eps, l.maximize};
  auto lists = optimizer_lists<Functor::kDepth>(l.common);
  lists.ptrs[kSum] = l.state_sums;
  multi_tensor_apply(lists, functor, stream);
}

}  // namespace

void launch_adagrad(const AdagradLaunch& l, cudaStream_t stream) {
  launch_optimizer(l.common, stream, [&](auto storage) {
    launch_functor<typename decltype(storage)::type>(l, stream);
  });
}

}  // namespace fastopt::cuda
