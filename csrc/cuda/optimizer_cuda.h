// Host-side helpers shared by the thin CUDA layers of the optimizer ops
// (adam_cuda.cpp, rmsprop_cuda.cpp, sgd_cuda.cpp, ...): dtype mapping, step
// counters, the update_norms output, the scalar tensors (lr, grad_scale,
// found_inf) the kernels read on the device, and OptimizerCall, which turns
// an op's validated arguments into the OptimizerLaunch every launch shares.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Optional.h>

#include <utility>
#include <vector>

#include "common/tensor_lists.h"
#include "cuda/kernel_dtype.h"
#include "cuda/kernels/optimizer_launch.h"

namespace fastopt::cuda {

// Device pointers to the float32 step counters, which increment_steps
// advances on the device (see NOTE: [step counters]).
inline std::vector<float*> step_pointers(const char* op, at::TensorList steps) {
  std::vector<float*> ptrs(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    TORCH_CHECK_TYPE(steps[i].scalar_type() == at::kFloat, op, ": state_steps[", i,
                     "] must be float32 for CUDA params, got ", steps[i].scalar_type());
    ptrs[i] = steps[i].mutable_data_ptr<float>();
  }
  return ptrs;
}

// The optional update_norms output: checked as the CPU op checks it
// (csrc/cpu/update_norms_output.cpp), then zeroed on the current stream, so
// that the kernels can add into it; a memset kernel, so graph capture is fine.
// Null when the output is not wanted.
inline double* update_norms_rows(const c10::optional<at::Tensor>& out, c10::Device device, size_t n) {
  if (!out.has_value()) return nullptr;
  const at::Tensor& t = *out;
  TORCH_CHECK(t.device() == device && t.is_contiguous(),
              "fastopt: update_norms must be a contiguous tensor on the params' device (", device,
              ") for CUDA params, got a ", t.is_contiguous() ? "contiguous" : "non-contiguous",
              " tensor on ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == c10::kDouble, "fastopt: update_norms must be float64, got ",
                   t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == static_cast<int64_t>(n) && t.size(1) == 2,
              "fastopt: update_norms must have shape [", n, ", 2], got ", t.sizes());
  // zero_ mutates through a const Tensor&, as every in-place op may.
  t.zero_();
  return t.mutable_data_ptr<double>();
}

// The scalar tensors of one optimizer call, as the kernels read them.
class DeviceScalars {
 public:
  DeviceScalars(c10::Device device, double lr, const at::Tensor* lr_tensor,
                const c10::optional<at::Tensor>& grad_scale,
                const c10::optional<at::Tensor>& found_inf)
      : lr_(lr) {
    // A CPU lr is read here, as torch's fused kernels do: reading host memory
    // does not synchronise, whereas copying it to the GPU would break CUDA
    // graph capture. A GPU lr stays on the GPU.
    if (lr_tensor != nullptr) {
      if (lr_tensor->is_cpu()) {
        lr_ = lr_tensor->item<double>();
      } else {
        lr_tensor_ = device_float(*lr_tensor, device);
      }
    }
    // float64: the clip factor of max_grad_norm travels in grad_scale, and
    // float64 params must not see it rounded to float32. AMP's float32 scale
    // converts exactly.
    if (grad_scale.has_value()) grad_scale_ = grad_scale->to(device, at::kDouble);
    if (found_inf.has_value()) found_inf_ = device_float(*found_inf, device);
  }

  // The float lr, ignored by the kernels when lr_ptr() is set.
  double lr() const { return lr_; }
  const float* lr_ptr() const { return ptr<float>(lr_tensor_); }
  const double* grad_scale() const { return ptr<double>(grad_scale_); }
  const float* found_inf() const { return ptr<float>(found_inf_); }

 private:
  // A one-element tensor as a float32 on `device`, which the kernels read
  // themselves so that nothing waits for the host. A no-op when it already is one.
  static at::Tensor device_float(const at::Tensor& t, c10::Device device) {
    return t.to(device, at::kFloat);
  }
  template <typename T>
  static const T* ptr(const at::Tensor& t) {
    return t.defined() ? t.const_data_ptr<T>() : nullptr;
  }

  double lr_;
  at::Tensor lr_tensor_;
  at::Tensor grad_scale_;
  at::Tensor found_inf_;
};

// A tensor argument the kernels read on the device (the hyperparameter table,
// the rounding seed), as a contiguous tensor of `dtype` on `device`. One that
// is on the CPU is copied with non_blocking: from pageable memory the copy
// is staged before the call returns, so nothing waits for the GPU. Undefined
// when the argument is absent.
inline at::Tensor on_device(const c10::optional<at::Tensor>& t, c10::Device device,
                            c10::ScalarType dtype) {
  if (!t.has_value()) return at::Tensor();
  return t->to(device, dtype, /*non_blocking=*/true).contiguous();
}

// The part of a CUDA optimizer op that every optimizer shares, from validated
// arguments to the launch: device guard, device scalars, flat lists (params,
// grads, the optimizer's state lists, param copies) and the OptimizerLaunch
// pointing into their arrays. An op builds one, fills its own
// launch struct from common() and state(), launches on stream() and calls
// finish(). Args is the op's AdamArgs, SgdArgs, ...: every one has the
// fields read here.
class OptimizerCall {
 public:
  // `steps`: the op's step counters (empty for SGD, which keeps none);
  // `state`: its state lists, in launch order.
  template <typename Args>
  OptimizerCall(const char* op, const Args& a, at::TensorList steps, std::vector<NamedList> state)
      : device_(a.params[0].device()),
        guard_(device_),
        scalars_(device_, a.lr, a.lr_tensor, a.grad_scale, a.found_inf),
        steps_(step_pointers(op, steps)),
        num_state_(state.size()),
        flat_(lists(a, scalars_.grad_scale() != nullptr, std::move(state))),
        hparams_(on_device(a.hparams, device_, at::kDouble)),
        rounding_seed_(on_device(a.rounding_seed, device_, at::kLong)) {
    common_.num_tensors = static_cast<int64_t>(flat_.size());
    common_.params = flat_.list_data(0);
    common_.grads = flat_.list_data(1);
    common_.param_copies = flat_.list_data(flat_.num_lists() - 1);  // null without master weights
    common_.steps = steps_.empty() ? nullptr : steps_.data();
    common_.numels = flat_.numels();
    common_.dtype = kernel_dtype(op, a.params[0].scalar_type());
    common_.grad_dtype = kernel_dtype(op, a.grads[0].scalar_type());
    common_.lr = scalars_.lr();
    common_.lr_ptr = scalars_.lr_ptr();
    common_.hparams = hparams_.defined() ? hparams_.const_data_ptr<double>() : nullptr;
    common_.rounding_seed =
        rounding_seed_.defined() ? rounding_seed_.const_data_ptr<int64_t>() : nullptr;
    common_.grad_scale = scalars_.grad_scale();
    common_.found_inf = scalars_.found_inf();
    common_.update_norms = update_norms_rows(a.update_norms, device_, a.params.size());
  }

  const OptimizerLaunch& common() const { return common_; }
  // State list i's pointers (in the order given), or null when it is empty.
  void* const* state(size_t i) const {
    TORCH_INTERNAL_ASSERT(i < num_state_);
    return flat_.list_data(2 + i);
  }
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(); }

  // After the launch: raises its launch error, if any, and copies temporaries
  // of written lists back into the caller's tensors.
  void finish() {
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    flat_.write_back();
  }

 private:
  template <typename Args>
  static std::vector<NamedList> lists(const Args& a, bool unscale, std::vector<NamedList> state) {
    std::vector<NamedList> out;
    out.reserve(state.size() + 3);
    out.push_back({"params", a.params, true});
    // Written only when unscaled in place, as torch's fused path does.
    out.push_back({"grads", a.grads, unscale});
    for (NamedList& l : state) out.push_back(l);
    out.push_back({"param_copies", a.param_copies, true});
    return out;
  }

  c10::Device device_;
  c10::cuda::CUDAGuard guard_;
  DeviceScalars scalars_;
  std::vector<float*> steps_;
  size_t num_state_;
  FlatTensorLists flat_;
  at::Tensor hparams_;
  at::Tensor rounding_seed_;
  OptimizerLaunch common_{};
};

}  // namespace fastopt::cuda
