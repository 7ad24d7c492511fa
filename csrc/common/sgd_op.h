// The arguments of the fastopt::sgd_ op family, gathered once so that every
// backend (CPU, CUDA) implements a single function of an SgdArgs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "common/tensor_lists.h"

namespace fastopt {

struct SgdArgs {
  at::TensorList params;
  at::TensorList grads;
  at::TensorList momentum_buffers;  // empty when momentum == 0
  double lr;
  const at::Tensor* lr_tensor;  // the sgd_.tensor_lr overload; otherwise null
  double momentum;
  double dampening;
  double weight_decay;
  bool nesterov;
  bool maximize;
  bool is_first_step;  // every buffer is new: it is set to the gradient
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
  // (lr, momentum, dampening, weight_decay); when given they replace the scalar arguments
  // (NOTE: [hyperparameter table]).
  const c10::optional<at::Tensor>& hparams;  // see AdamArgs::update_norms
};

// Adapts a backend's `void impl(const SgdArgs&)` to the two op overloads
// declared in registration.cpp (float lr and Tensor lr).
template <void (*impl)(const SgdArgs&)>
struct SgdOverloads {
  static void scalar_lr(at::TensorList params, at::TensorList grads,
                        at::TensorList momentum_buffers, double lr, double momentum,
                        double dampening, double weight_decay, bool nesterov, bool maximize,
                        bool is_first_step, const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf,
                        const c10::optional<at::Tensor>& update_norms,
                        std::optional<at::TensorList> param_copies,
                        const c10::optional<at::Tensor>& rounding_seed,
                        const c10::optional<at::Tensor>& hparams) {
    impl(SgdArgs{params, grads, momentum_buffers, lr, nullptr, momentum, dampening, weight_decay,
                 nesterov, maximize, is_first_step, grad_scale, found_inf, update_norms,
                 list_or_empty(param_copies), rounding_seed, hparams});
  }

  static void tensor_lr(at::TensorList params, at::TensorList grads,
                        at::TensorList momentum_buffers, const at::Tensor& lr, double momentum,
                        double dampening, double weight_decay, bool nesterov, bool maximize,
                        bool is_first_step, const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf,
                        const c10::optional<at::Tensor>& update_norms,
                        std::optional<at::TensorList> param_copies,
                        const c10::optional<at::Tensor>& rounding_seed,
                        const c10::optional<at::Tensor>& hparams) {
    impl(SgdArgs{params, grads, momentum_buffers, 0.0, &lr, momentum, dampening, weight_decay,
                 nesterov, maximize, is_first_step, grad_scale, found_inf, update_norms,
                 list_or_empty(param_copies), rounding_seed, hparams});
  }
};

// Shared validation of an SgdArgs (list lengths, devices, dtypes, shapes, lr
// tensor). `device` is the backend's device type.
void check_sgd_args(const SgdArgs& args, c10::DeviceType device);

}  // namespace fastopt
