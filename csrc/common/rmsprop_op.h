// The arguments of the fastopt::rmsprop_ op family, gathered once so that
// every backend (CPU, CUDA) implements a single function of an RMSpropArgs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "common/tensor_lists.h"

namespace fastopt {

struct RMSpropArgs {
  at::TensorList params;
  at::TensorList grads;
  at::TensorList square_avgs;
  at::TensorList grad_avgs;         // empty unless centered
  at::TensorList momentum_buffers;  // empty unless momentum > 0
  at::TensorList state_steps;
  double lr;
  const at::Tensor* lr_tensor;  // the rmsprop_.tensor_lr overload; otherwise null
  double alpha;
  double eps;
  double weight_decay;
  double momentum;
  bool centered;
  bool maximize;
  const c10::optional<at::Tensor>& grad_scale;
  const c10::optional<at::Tensor>& found_inf;
  // [num_tensors, 2] float64 output, as for adam_ (see FusedOptimizer.update_ratios).
  const c10::optional<at::Tensor>& update_norms;
  // Master weights: the 16-bit parameters that receive the rounded update
  // (params are then their float32 masters, and grads keep the 16-bit
  // dtype); empty otherwise.
  at::TensorList param_copies;
  // Two int64 Philox words (NOTE: [rounding stream]) when bfloat16 stores
  // round stochastically; otherwise they round to nearest.
  const c10::optional<at::Tensor>& rounding_seed;
  // Per-tensor hyperparameters, float64 [num_tensors, 5] with columns
  // (lr, alpha, eps, weight_decay, momentum); when given they replace the scalar arguments
  // (NOTE: [hyperparameter table]).
  const c10::optional<at::Tensor>& hparams;

  bool has_momentum() const { return momentum > 0.0; }
};

// Adapts a backend's `void impl(const RMSpropArgs&)` to the two op overloads
// declared in registration.cpp (float lr and Tensor lr).
template <void (*impl)(const RMSpropArgs&)>
struct RMSpropOverloads {
  static void scalar_lr(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                        at::TensorList grad_avgs, at::TensorList momentum_buffers,
                        at::TensorList state_steps, double lr, double alpha, double eps,
                        double weight_decay, double momentum, bool centered, bool maximize,
                        const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf,
                        const c10::optional<at::Tensor>& update_norms,
                        std::optional<at::TensorList> param_copies,
                        const c10::optional<at::Tensor>& rounding_seed,
                        const c10::optional<at::Tensor>& hparams) {
    impl(RMSpropArgs{params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr,
                     nullptr, alpha, eps, weight_decay, momentum, centered, maximize, grad_scale,
                     found_inf, update_norms,
                 list_or_empty(param_copies), rounding_seed, hparams});
  }

  static void tensor_lr(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                        at::TensorList grad_avgs, at::TensorList momentum_buffers,
                        at::TensorList state_steps, const at::Tensor& lr, double alpha,
                        double eps, double weight_decay, double momentum, bool centered,
                        bool maximize, const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf,
                        const c10::optional<at::Tensor>& update_norms,
                        std::optional<at::TensorList> param_copies,
                        const c10::optional<at::Tensor>& rounding_seed,
                        const c10::optional<at::Tensor>& hparams) {
    impl(RMSpropArgs{params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, 0.0,
                     &lr, alpha, eps, weight_decay, momentum, centered, maximize, grad_scale,
                     found_inf, update_norms,
                 list_or_empty(param_copies), rounding_seed, hparams});
  }
};

// Shared validation of an RMSpropArgs (list lengths, devices, dtypes, shapes,
// step counters, lr tensor). `device` is the backend's device type.
void check_rmsprop_args(const RMSpropArgs& args, c10::DeviceType device);

}  // namespace fastopt
