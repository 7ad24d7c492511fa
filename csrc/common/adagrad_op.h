// The arguments of the fastopt::adagrad_ op family, gathered once so that
// every backend (CPU, CUDA) implements a single function of an AdagradArgs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "common/tensor_lists.h"

namespace fastopt {

struct AdagradArgs {
  at::TensorList params;
  at::TensorList grads;
  at::TensorList state_sums;
  at::TensorList state_steps;
  double lr;
  const at::Tensor* lr_tensor;  // the adagrad_.tensor_lr overload; otherwise null
  double lr_decay;
  double weight_decay;
  double eps;
  bool maximize;
  const c10::optional<at::Tensor>& grad_scale;
  const c10::optional<at::Tensor>& found_inf;
  const c10::optional<at::Tensor>& update_norms;
  // Master weights: the 16-bit parameters that receive the rounded update
  // (params are then their float32 masters, and grads keep the 16-bit
  // dtype); empty otherwise.
  at::TensorList param_copies;
  // Two int64 Philox words (NOTE: [rounding stream]) when bfloat16 stores
  // round stochastically; otherwise they round to nearest.
  const c10::optional<at::Tensor>& rounding_seed;
  // Per-tensor hyperparameters, float64 [num_tensors, 4] with columns
  // (lr, lr_decay, weight_decay, eps); when given they replace the scalar arguments
  // (NOTE: [hyperparameter table]).
  const c10::optional<at::Tensor>& hparams;  // see AdamArgs::update_norms
};

// Adapts a backend's `void impl(const AdagradArgs&)` to the two op overloads
// declared in registration.cpp (float lr and Tensor lr).
template <void (*impl)(const AdagradArgs&)>
struct AdagradOverloads {
  static void scalar_lr(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                        at::TensorList state_steps, double lr, double lr_decay,
                        double weight_decay, double eps, bool maximize,
                        const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf,
                        const c10::optional<at::Tensor>& update_norms,
                        std::optional<at::TensorList> param_copies,
                        const c10::optional<at::Tensor>& rounding_seed,
                        const c10::optional<at::Tensor>& hparams) {
    impl(AdagradArgs{params, grads, state_sums, state_steps, lr, nullptr, lr_decay, weight_decay,
                     eps, maximize, grad_scale, found_inf, update_norms,
                 list_or_empty(param_copies), rounding_seed, hparams});
  }

  static void tensor_lr(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                        at::TensorList state_steps, const at::Tensor& lr, double lr_decay,
                        double weight_decay, double eps, bool maximize,
                        const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf,
                        const c10::optional<at::Tensor>& update_norms,
                        std::optional<at::TensorList> param_copies,
                        const c10::optional<at::Tensor>& rounding_seed,
                        const c10::optional<at::Tensor>& hparams) {
    impl(AdagradArgs{params, grads, state_sums, state_steps, 0.0, &lr, lr_decay, weight_decay,
                     eps, maximize, grad_scale, found_inf, update_norms,
                 list_or_empty(param_copies), rounding_seed, hparams});
  }
};

// Shared validation of an AdagradArgs (list lengths, devices, dtypes, shapes,
// step counters, lr tensor). `device` is the backend's device type.
void check_adagrad_args(const AdagradArgs& args, c10::DeviceType device);

}  // namespace fastopt
