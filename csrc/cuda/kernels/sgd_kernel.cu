// The SGD functor for the multi-tensor-apply driver, and its launch. The
// per-element math is fastopt::sgd_update, shared with the CPU kernels.
#include "cuda/kernels/sgd_kernel.h"

#include "common/sgd_math.h"
#include "cuda/kernels/multi_tensor_apply.cuh"

namespace fastopt::cuda {
namespace {

// List slots, in the order of SgdLaunch.
enum SgdList : int { kParam = 0, kGrad, kMomentumBuffer };

template <typename T, bool MOMENTUM>
struct SgdFunctor {
  using storage_t = T;
  static constexpr int kDepth = MOMENTUM ? 3 : 2;

  double lr;
  const float* lr_ptr;
  double momentum;
  double dampening;
  double weight_decay;
  const float* grad_scale;
  const float* found_inf;
  SgdOptions options;

  // SGD has no step counter: the driver passes null.
  __device__ void operator()(const Chunk<T, kDepth>& chunk, const float* /*step*/) const {
    using M = opmath_t<T>;
    // Before for_each, so a skipped step adds nothing to the update norms; the
    // whole block takes this return, as NOTE: [update norms] requires.
    if (found_inf != nullptr && *found_inf != 0.f) return;
    const SgdCoeffs<M> coeffs(
        make_sgd_coeffs(lr_ptr != nullptr ? *lr_ptr : lr, momentum, dampening, weight_decay));
    const bool unscale = grad_scale != nullptr;
    const M scale = unscale ? static_cast<M>(*grad_scale) : M(1);
    // torch's fused path stores the unscaled gradient, as GradScaler.unscale_ would.
    const uint32_t written = (1u << kParam) | (MOMENTUM ? 1u << kMomentumBuffer : 0u) |
                             (unscale ? 1u << kGrad : 0u);

    chunk.for_each(written, [&](M (&v)[kDepth]) {
      if (unscale) v[kGrad] = v[kGrad] / scale;
      M* momentum_buffer = nullptr;
      if constexpr (MOMENTUM) momentum_buffer = &v[kMomentumBuffer];
      sgd_update<M>(v[kParam], v[kGrad], momentum_buffer, coeffs, options);
    });
  }
};

template <typename T, bool MOMENTUM>
void launch_functor(const SgdLaunch& l, cudaStream_t stream) {
  using Functor = SgdFunctor<T, MOMENTUM>;
  const Functor functor{l.lr,           l.lr_ptr,     l.momentum,
                        l.dampening,    l.weight_decay, l.grad_scale,
                        l.found_inf,
                        SgdOptions{l.maximize, l.weight_decay != 0.0, l.nesterov, l.is_first_step}};
  void* const* const lists[] = {l.params, l.grads, l.momentum_buffers};
  multi_tensor_apply(make_tensor_lists<Functor::kDepth>(lists, l.numels, nullptr, l.update_norms,
                                                       l.num_tensors),
                     functor, stream);
}

}  // namespace

void launch_sgd(const SgdLaunch& l, cudaStream_t stream) {
  if (l.num_tensors == 0) return;
  dispatch_dtype(l.dtype, [&](auto storage) {
    using T = typename decltype(storage)::type;
    l.momentum_buffers != nullptr ? launch_functor<T, true>(l, stream)
                                  : launch_functor<T, false>(l, stream);
  });
}

}  // namespace fastopt::cuda
