// The arguments of the fastopt::adam_ op family, gathered once so that every
// backend (CPU, CUDA) implements a single function of an AdamArgs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "common/tensor_lists.h"

namespace fastopt {

struct AdamArgs {
  at::TensorList params;
  at::TensorList grads;
  at::TensorList exp_avgs;
  at::TensorList exp_avg_sqs;
  at::TensorList max_exp_avg_sqs;  // empty unless amsgrad
  at::TensorList state_steps;
  double lr;
  const at::Tensor* lr_tensor;  // the adam_.tensor_lr overload; otherwise null
  double beta1;
  double beta2;
  double weight_decay;
  double eps;
  bool amsgrad;
  bool maximize;
  bool decoupled_weight_decay;  // AdamW
  const c10::optional<at::Tensor>& grad_scale;
  const c10::optional<at::Tensor>& found_inf;
  // [num_tensors, 2] float64 output: per tensor, the sum of squared updates
  // and of squared params before the step (see FusedOptimizer.update_ratios).
  const c10::optional<at::Tensor>& update_norms;
  // Master weights: the 16-bit parameters that receive the rounded update
  // (params are then their float32 masters, and grads keep the 16-bit
  // dtype); empty otherwise.
  at::TensorList param_copies;
  // Two int64 Philox words (NOTE: [rounding stream]) when bfloat16 stores
  // round stochastically; otherwise they round to nearest.
  const c10::optional<at::Tensor>& rounding_seed;
  // Per-tensor hyperparameters, float64 [num_tensors, 5] with columns
  // (lr, beta1, beta2, weight_decay, eps); when given they replace the scalar arguments
  // (NOTE: [hyperparameter table]).
  const c10::optional<at::Tensor>& hparams;
};

// Adapts a backend's `void impl(const AdamArgs&)` to the two op overloads
// declared in registration.cpp (float lr and Tensor lr).
template <void (*impl)(const AdamArgs&)>
struct AdamOverloads {
  static void scalar_lr(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                        at::TensorList state_steps, double lr, double beta1, double beta2,
                        double weight_decay, double eps, bool amsgrad, bool maximize,
                        bool decoupled_weight_decay, const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf,
                        const c10::optional<at::Tensor>& update_norms,
                        std::optional<at::TensorList> param_copies,
                        const c10::optional<at::Tensor>& rounding_seed,
                        const c10::optional<at::Tensor>& hparams) {
    impl(AdamArgs{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, nullptr,
                  beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
                  grad_scale, found_inf, update_norms,
                 list_or_empty(param_copies), rounding_seed, hparams});
  }

  static void tensor_lr(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                        at::TensorList state_steps, const at::Tensor& lr, double beta1,
                        double beta2, double weight_decay, double eps, bool amsgrad,
                        bool maximize, bool decoupled_weight_decay,
                        const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf,
                        const c10::optional<at::Tensor>& update_norms,
                        std::optional<at::TensorList> param_copies,
                        const c10::optional<at::Tensor>& rounding_seed,
                        const c10::optional<at::Tensor>& hparams) {
    impl(AdamArgs{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, 0.0, &lr,
                  beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
                  grad_scale, found_inf, update_norms,
                 list_or_empty(param_copies), rounding_seed, hparams});
  }
};

// Shared validation of an AdamArgs (list lengths, devices, dtypes, shapes,
// step counters, lr tensor). `device` is the backend's device type.
void check_adam_args(const AdamArgs& args, c10::DeviceType device);

}  // namespace fastopt
