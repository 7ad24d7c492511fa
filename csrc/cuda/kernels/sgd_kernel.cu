// The SGD functor for the multi-tensor-apply driver, and its launch. The
// per-element math is fastopt::sgd_update, shared with the CPU kernels.
#include "cuda/kernels/sgd_kernel.h"

#include "common/sgd_math.h"
#include "cuda/kernels/optimizer_functor.cuh"

namespace fastopt::cuda {
namespace {

// List slots, in the order of SgdLaunch.
enum SgdList : int { kParam = 0, kGrad, kMomentumBuffer };
// Columns of the hyperparameter table.
enum SgdColumn : int { kLr = 0, kMomentum, kDampening, kWeightDecay, kColumns };

template <typename S, bool MOMENTUM>
struct SgdFunctor {
  using storage_t = S;
  static constexpr int kDepth = MOMENTUM ? 3 : 2;

  StepScalars scalars;
  double momentum;
  double dampening;
  double weight_decay;
  SgdOptions options;  // has_weight_decay is decided per tensor

  // SGD has no step counter: the driver passes null.
  __device__ void operator()(const Chunk<S, kDepth>& chunk, const float* /*step*/) const {
    using M = storage_opmath_t<S>;
    // Before for_each, so a skipped step adds nothing to the update norms.
    if (scalars.skipped()) return;
    double h[kColumns] = {0.0, momentum, dampening, weight_decay};
    scalars.read(chunk.tensor, h);
    const SgdCoeffs<M> coeffs(
        make_sgd_coeffs(h[kLr], h[kMomentum], h[kDampening], h[kWeightDecay]));
    SgdOptions opts = options;
    opts.has_weight_decay = h[kWeightDecay] != 0.0;
    const bool unscale = scalars.unscale();
    const M scale = scalars.grad_divisor<M>();
    // torch's fused path stores the unscaled gradient, as GradScaler.unscale_ would.
    const uint32_t written = (1u << kParam) | (MOMENTUM ? 1u << kMomentumBuffer : 0u) |
                             (unscale ? 1u << kGrad : 0u);

    chunk.for_each(written, [&](M (&v)[kDepth]) {
      if (unscale) v[kGrad] = v[kGrad] / scale;
      M* momentum_buffer = nullptr;
      if constexpr (MOMENTUM) momentum_buffer = &v[kMomentumBuffer];
      sgd_update<M>(v[kParam], v[kGrad], momentum_buffer, coeffs, opts);
    });
  }
};

template <typename S, bool MOMENTUM>
void launch_functor(const SgdLaunch& l, cudaStream_t stream) {
  using Functor = SgdFunctor<S, MOMENTUM>;
  const Functor functor{StepScalars::of(l.common), l.momentum, l.dampening, l.weight_decay,
                        SgdOptions{l.maximize, false, l.nesterov, l.is_first_step}};
  auto lists = optimizer_lists<Functor::kDepth>(l.common);
  if constexpr (MOMENTUM) lists.ptrs[kMomentumBuffer] = l.momentum_buffers;
  multi_tensor_apply(lists, functor, stream);
}

}  // namespace

void launch_sgd(const SgdLaunch& l, cudaStream_t stream) {
  launch_optimizer(l.common, stream, [&](auto storage) {
    using S = typename decltype(storage)::type;
    l.momentum_buffers != nullptr ? launch_functor<S, true>(l, stream)
                                  : launch_functor<S, false>(l, stream);
  });
}

}  // namespace fastopt::cuda
