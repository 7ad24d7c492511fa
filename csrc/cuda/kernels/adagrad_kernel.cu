// The Adagrad functor for the multi-tensor-apply driver, and its launch. The
// per-element math is fastopt::adagrad_update, shared with the CPU kernels.
#include "cuda/kernels/adagrad_kernel.h"

#include "common/adagrad_math.h"
#include "cuda/kernels/multi_tensor_apply.cuh"

namespace fastopt::cuda {
namespace {

// List slots, in the order of AdagradLaunch.
enum AdagradList : int { kParam = 0, kGrad, kSum, kDepth };

template <typename T>
struct AdagradFunctor {
  using storage_t = T;
  static constexpr int kDepth = AdagradList::kDepth;

  double lr;
  const float* lr_ptr;
  double lr_decay;
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
    // The decayed lr uses the step counter that increment_steps has already
    // advanced; see NOTE: [step counters].
    const AdagradCoeffs<M> coeffs(make_adagrad_coeffs(lr_ptr != nullptr ? *lr_ptr : lr, lr_decay,
                                                      weight_decay, eps, *step));
    const bool has_weight_decay = weight_decay != 0.0;
    const bool unscale = grad_scale != nullptr;
    const M scale = unscale ? static_cast<M>(*grad_scale) : M(1);
    // torch's fused path stores the unscaled gradient, as GradScaler.unscale_ would.
    const uint32_t written = (1u << kParam) | (1u << kSum) | (unscale ? 1u << kGrad : 0u);

    chunk.for_each(written, [&](M (&v)[kDepth]) {
      if (unscale) v[kGrad] = v[kGrad] / scale;
      adagrad_update<M>(v[kParam], v[kGrad], v[kSum], coeffs, maximize, has_weight_decay);
    });
  }
};

template <typename T>
void launch_functor(const AdagradLaunch& l, cudaStream_t stream) {
  using Functor = AdagradFunctor<T>;
  const Functor functor{l.lr,           l.lr_ptr,     l.lr_decay,  l.weight_decay,
                        l.eps,          l.grad_scale, l.found_inf, l.maximize};
  void* const* const lists[] = {l.params, l.grads, l.state_sums};
  multi_tensor_apply(make_tensor_lists<Functor::kDepth>(lists, l.numels, l.steps, l.update_norms,
                                                       l.num_tensors),
                     functor, stream);
}

}  // namespace

void launch_adagrad(const AdagradLaunch& l, cudaStream_t stream) {
  if (l.num_tensors == 0) return;
  increment_steps(l.steps, l.num_tensors, l.found_inf, stream);
  dispatch_dtype(l.dtype, [&](auto storage) { launch_functor<typename decltype(storage)::type>(l, stream); });
}

}  // namespace fastopt::cuda
