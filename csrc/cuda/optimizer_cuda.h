// Host-side helpers shared by the thin CUDA layers of the optimizer ops
// (adam_cuda.cpp, rmsprop_cuda.cpp, sgd_cuda.cpp, ...): dtype mapping, step counters, the
// update_norms output and the scalar tensors (lr, grad_scale, found_inf) the
// kernels read on the device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

#include "common/tensor_lists.h"
#include "cuda/kernel_dtype.h"

namespace fastopt::cuda {

// Master weights (param_copies), stochastic rounding (rounding_seed) and the
// per-tensor hparams table have CPU kernels only so far; a CUDA call with
// them fails loudly rather than, say, updating masters without writing the
// parameters back.
inline void reject_param_storage(const char* op, at::TensorList param_copies,
                                 const c10::optional<at::Tensor>& rounding_seed,
                                 const c10::optional<at::Tensor>& hparams) {
  TORCH_CHECK_NOT_IMPLEMENTED(param_copies.empty() && !rounding_seed.has_value(), op,
                              ": master_weights and stochastic_rounding are not implemented "
                              "for CUDA tensors yet");
  // fastopt.optim never passes a table for CUDA params (see _merge_groups).
  TORCH_CHECK_NOT_IMPLEMENTED(!hparams.has_value(), op,
                              ": a per-tensor hparams table is not implemented for CUDA yet");
}

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

// The host arrays a launch struct points into: per list, one device pointer
// per tensor, and the numels. An absent optional list (empty, e.g.
// max_exp_avg_sqs without amsgrad) gets a null array, which is how the
// kernels tell that the state is not there.
class LaunchPointers {
 public:
  LaunchPointers(const FlatTensorLists& flat, size_t num_lists)
      : ptrs_(num_lists), numels_(flat.size()) {
    for (size_t l = 0; l < num_lists; ++l) {
      if (flat.has_list(l)) ptrs_[l].resize(flat.size());
    }
    for (size_t i = 0; i < flat.size(); ++i) {
      for (size_t l = 0; l < num_lists; ++l) {
        if (!ptrs_[l].empty()) ptrs_[l][i] = flat.data(l, i);
      }
      numels_[i] = flat.numel(i);
    }
  }

  // List l's pointers, or null when the list is absent.
  void* const* list(size_t l) const { return ptrs_[l].empty() ? nullptr : ptrs_[l].data(); }
  const int64_t* numels() const { return numels_.data(); }
  int64_t num_tensors() const { return static_cast<int64_t>(numels_.size()); }

 private:
  std::vector<std::vector<void*>> ptrs_;
  std::vector<int64_t> numels_;
};

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
    if (grad_scale.has_value()) grad_scale_ = device_float(*grad_scale, device);
    if (found_inf.has_value()) found_inf_ = device_float(*found_inf, device);
  }

  // The float lr, ignored by the kernels when lr_ptr() is set.
  double lr() const { return lr_; }
  const float* lr_ptr() const { return ptr(lr_tensor_); }
  const float* grad_scale() const { return ptr(grad_scale_); }
  const float* found_inf() const { return ptr(found_inf_); }

 private:
  // A one-element tensor as a float32 on `device`, which the kernels read
  // themselves so that nothing waits for the host. A no-op when it already is one.
  static at::Tensor device_float(const at::Tensor& t, c10::Device device) {
    return t.to(device, at::kFloat);
  }
  static const float* ptr(const at::Tensor& t) {
    return t.defined() ? t.const_data_ptr<float>() : nullptr;
  }

  double lr_;
  at::Tensor lr_tensor_;
  at::Tensor grad_scale_;
  at::Tensor found_inf_;
};

}  // namespace fastopt::cuda
