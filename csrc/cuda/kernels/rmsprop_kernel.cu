// The RMSprop functor for the multi-tensor-apply driver, and its launch.
// The per-element math is fastopt::rmsprop_update, shared with the CPU kernels.
#include "cuda/kernels/rmsprop_kernel.h"

#include "common/rmsprop_math.h"
#include "cuda/kernels/multi_tensor_apply.cuh"

namespace fastopt::cuda {
namespace {

// List slots: param, grad and square_avg always; grad_avg and momentum_buffer
// only in the variants that keep them, so no chunk loads an unused list.
template <typename T, bool CENTERED, bool MOMENTUM>
struct RMSpropFunctor {
  using storage_t = T;
  static constexpr int kParam = 0, kGrad = 1, kSquareAvg = 2;
  static constexpr int kGradAvg = 3;              // valid if CENTERED
  static constexpr int kMomentum = 3 + CENTERED;  // valid if MOMENTUM
  static constexpr int kDepth = 3 + CENTERED + MOMENTUM;
  // Lists every step writes; the gradient is written only when unscaling.
  static constexpr uint32_t kStateLists = (1u << kParam) | (1u << kSquareAvg) |
                                          (CENTERED ? 1u << kGradAvg : 0u) |
                                          (MOMENTUM ? 1u << kMomentum : 0u);

  double lr;
  const float* lr_ptr;
  double alpha;
  double eps;
  double weight_decay;
  double momentum;
  const float* grad_scale;
  const float* found_inf;
  bool maximize;

  __device__ void operator()(const Chunk<T, kDepth>& chunk, const float* /*step*/) const {
    using M = opmath_t<T>;
    // Before for_each, so a skipped step adds nothing to the update norms; the
    // whole block takes this return, as NOTE: [update norms] requires.
    if (found_inf != nullptr && *found_inf != 0.f) return;
    const RMSpropCoeffs<M> coeffs(make_rmsprop_scalars<M>(lr_ptr != nullptr ? *lr_ptr : lr, alpha,
                                                          eps, weight_decay, momentum));
    const bool has_weight_decay = weight_decay != 0.0;
    const bool unscale = grad_scale != nullptr;
    const M scale = unscale ? static_cast<M>(*grad_scale) : M(1);
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

template <typename T, bool CENTERED, bool MOMENTUM>
void launch_functor(const RMSpropLaunch& l, cudaStream_t stream) {
  using Functor = RMSpropFunctor<T, CENTERED, MOMENTUM>;
  const Functor functor{l.lr,       l.lr_ptr,     l.alpha,     l.eps,     l.weight_decay,
                        l.momentum, l.grad_scale, l.found_inf, l.maximize};
  TensorLists<Functor::kDepth> lists{};
  lists.ptrs[Functor::kParam] = l.params;
  lists.ptrs[Functor::kGrad] = l.grads;
  lists.ptrs[Functor::kSquareAvg] = l.square_avgs;
  if constexpr (CENTERED) lists.ptrs[Functor::kGradAvg] = l.grad_avgs;
  if constexpr (MOMENTUM) lists.ptrs[Functor::kMomentum] = l.momentum_buffers;
  lists.numels = l.numels;
  lists.steps = nullptr;  // the update does not read the step; increment_steps counts it
  lists.norms = l.update_norms;
  lists.num_tensors = l.num_tensors;
  multi_tensor_apply(lists, functor, stream);
}

template <typename T>
void launch_dtype(const RMSpropLaunch& l, cudaStream_t stream) {
  const bool has_momentum = l.momentum > 0.0;
  if (l.centered) {
    has_momentum ? launch_functor<T, true, true>(l, stream)
                 : launch_functor<T, true, false>(l, stream);
  } else {
    has_momentum ? launch_functor<T, false, true>(l, stream)
                 : launch_functor<T, false, false>(l, stream);
  }
}

}  // namespace

void launch_rmsprop(const RMSpropLaunch& l, cudaStream_t stream) {
  if (l.num_tensors == 0) return;
  increment_steps(l.steps, l.num_tensors, l.found_inf, stream);
  dispatch_dtype(l.dtype, [&](auto storage) { launch_dtype<typename decltype(storage)::type>(l, stream); });
}

}  // namespace fastopt::cuda
