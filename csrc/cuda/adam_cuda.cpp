// fastopt::adam_ on CUDA: validation, device guard and stream, then the
// torch-free launch in kernels/adam_kernel.cu. Only this layer sees tensors.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "common/adam_op.h"
#include "common/tensor_lists.h"
#include "cuda/kernels/adam_kernel.h"
#include "cuda/optimizer_cuda.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.adam_";

void adam_cuda(const AdamArgs& a) {
  // Also checks that the step counters are on the params' device.
  check_adam_args(a, c10::DeviceType::CUDA);
  reject_param_storage(kOp, a.param_copies, a.rounding_seed, a.hparams);
  if (a.params.empty()) return;

  const c10::Device device = a.params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const std::vector<float*> steps = step_pointers(kOp, a.state_steps);
  const DeviceScalars scalars(device, a.lr, a.lr_tensor, a.grad_scale, a.found_inf);

  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, scalars.grad_scale() != nullptr},
                        {"exp_avgs", a.exp_avgs, true},
                        {"exp_avg_sqs", a.exp_avg_sqs, true},
                        {"max_exp_avg_sqs", a.max_exp_avg_sqs, true}});
  const LaunchPointers ptrs(flat, 5);

  AdamLaunch launch{};
  launch.num_tensors = ptrs.num_tensors();
  launch.params = ptrs.list(0);
  launch.grads = ptrs.list(1);
  launch.exp_avgs = ptrs.list(2);
  launch.exp_avg_sqs = ptrs.list(3);
  launch.max_exp_avg_sqs = ptrs.list(4);  // null unless amsgrad
  launch.steps = steps.data();
  launch.numels = ptrs.numels();
  launch.dtype = kernel_dtype(kOp, a.params[0].scalar_type());
  launch.lr = scalars.lr();
  launch.lr_ptr = scalars.lr_ptr();
  launch.beta1 = a.beta1;
  launch.beta2 = a.beta2;
  launch.weight_decay = a.weight_decay;
  launch.eps = a.eps;
  launch.amsgrad = a.amsgrad;
  launch.maximize = a.maximize;
  launch.adamw = a.decoupled_weight_decay;
  launch.grad_scale = scalars.grad_scale();
  launch.found_inf = scalars.found_inf();
  launch.update_norms = update_norms_rows(a.update_norms, device, a.params.size());

  launch_adam(launch, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  flat.write_back();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("adam_", &AdamOverloads<adam_cuda>::scalar_lr);
  m.impl("adam_.tensor_lr", &AdamOverloads<adam_cuda>::tensor_lr);
}

}  // namespace fastopt::cuda
