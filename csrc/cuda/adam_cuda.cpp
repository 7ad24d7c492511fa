// fastopt::adam_ on CUDA: validation, device guard and stream, then the
// torch-free launch in kernels/adam_kernel.cu. Only this layer sees tensors.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "common/adam_op.h"
#include "common/tensor_lists.h"
#include "cuda/kernel_dtype.h"
#include "cuda/kernels/adam_kernel.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.adam_";

// A one-element tensor as a float32 on `device`, which the kernels read
// themselves so that nothing waits for the host. A no-op when it already is one.
at::Tensor device_float(const at::Tensor& t, c10::Device device) {
  return t.to(device, at::kFloat);
}

// The optional update_norms output: checked as the CPU op checks it
// (csrc/cpu/update_norms_output.cpp), then zeroed on the current stream, so
// that the kernels can add into it; a memset kernel, so graph capture is fine.
// Null when the output is not wanted.
double* update_norms_rows(const c10::optional<at::Tensor>& out, c10::Device device, size_t n) {
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

void adam_cuda(const AdamArgs& a) {
  // Also checks that the step counters are on the params' device.
  check_adam_args(a, c10::DeviceType::CUDA);
  if (a.params.empty()) return;

  const c10::Device device = a.params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const size_t n = a.params.size();
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK_TYPE(a.state_steps[i].scalar_type() == at::kFloat, kOp, ": state_steps[", i,
                     "] must be float32 for CUDA params, got ", a.state_steps[i].scalar_type());
  }

  // A CPU lr is read here, as torch's fused kernels do: reading host memory
  // does not synchronise, whereas copying it to the GPU would break CUDA graph
  // capture. A GPU lr stays on the GPU.
  double lr = a.lr;
  at::Tensor lr_tensor;
  if (a.lr_tensor != nullptr) {
    if (a.lr_tensor->is_cpu()) {
      lr = a.lr_tensor->item<double>();
    } else {
      lr_tensor = device_float(*a.lr_tensor, device);
    }
  }
  const at::Tensor grad_scale =
      a.grad_scale.has_value() ? device_float(*a.grad_scale, device) : at::Tensor();
  const at::Tensor found_inf =
      a.found_inf.has_value() ? device_float(*a.found_inf, device) : at::Tensor();

  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, grad_scale.defined()},
                        {"exp_avgs", a.exp_avgs, true},
                        {"exp_avg_sqs", a.exp_avg_sqs, true},
                        {"max_exp_avg_sqs", a.max_exp_avg_sqs, true}});
  constexpr size_t kLists = 5;
  std::vector<void*> ptrs[kLists];
  std::vector<float*> steps(n);
  std::vector<int64_t> numels(n);
  for (size_t l = 0; l < kLists; ++l) ptrs[l].resize(n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t l = 0; l < kLists; ++l) ptrs[l][i] = flat.data(l, i);
    steps[i] = a.state_steps[i].mutable_data_ptr<float>();
    numels[i] = flat.numel(i);
  }

  AdamLaunch launch{};
  launch.num_tensors = static_cast<int64_t>(n);
  launch.params = ptrs[0].data();
  launch.grads = ptrs[1].data();
  launch.exp_avgs = ptrs[2].data();
  launch.exp_avg_sqs = ptrs[3].data();
  launch.max_exp_avg_sqs = a.amsgrad ? ptrs[4].data() : nullptr;
  launch.steps = steps.data();
  launch.numels = numels.data();
  launch.dtype = kernel_dtype(kOp, a.params[0].scalar_type());
  launch.lr = lr;
  launch.lr_ptr = lr_tensor.defined() ? lr_tensor.const_data_ptr<float>() : nullptr;
  launch.beta1 = a.beta1;
  launch.beta2 = a.beta2;
  launch.weight_decay = a.weight_decay;
  launch.eps = a.eps;
  launch.amsgrad = a.amsgrad;
  launch.maximize = a.maximize;
  launch.adamw = a.decoupled_weight_decay;
  launch.grad_scale = grad_scale.defined() ? grad_scale.const_data_ptr<float>() : nullptr;
  launch.found_inf = found_inf.defined() ? found_inf.const_data_ptr<float>() : nullptr;
  launch.update_norms = update_norms_rows(a.update_norms, device, n);

  launch_adam(launch, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  flat.write_back();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("adam_", &AdamOverloads<adam_cuda>::scalar_lr);
  m.impl("adam_.tensor_lr", &AdamOverloads<adam_cuda>::tensor_lr);
}

}  // namespace fastopt::cuda
