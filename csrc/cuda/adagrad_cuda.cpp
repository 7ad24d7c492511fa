// fastopt::adagrad_ on CUDA: validation, device guard and stream, then the
// torch-free launch in kernels/adagrad_kernel.cu. Only this layer sees tensors.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "common/adagrad_op.h"
#include "common/tensor_lists.h"
#include "cuda/kernels/adagrad_kernel.h"
#include "cuda/optimizer_cuda.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.adagrad_";

void adagrad_cuda(const AdagradArgs& a) {
  // Also checks that the step counters are on the params' device.
  check_adagrad_args(a, c10::DeviceType::CUDA);
  reject_param_storage(kOp, a.param_copies, a.rounding_seed, a.hparams);
  if (a.params.empty()) return;

  const c10::Device device = a.params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const std::vector<float*> steps = step_pointers(kOp, a.state_steps);
  const DeviceScalars scalars(device, a.lr, a.lr_tensor, a.grad_scale, a.found_inf);

  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, scalars.grad_scale() != nullptr},
                        {"state_sums", a.state_sums, true}});
  const LaunchPointers ptrs(flat, 3);

  AdagradLaunch launch{};
  launch.num_tensors = ptrs.num_tensors();
  launch.params = ptrs.list(0);
  launch.grads = ptrs.list(1);
  launch.state_sums = ptrs.list(2);
  launch.steps = steps.data();
  launch.numels = ptrs.numels();
  launch.dtype = kernel_dtype(kOp, a.params[0].scalar_type());
  launch.lr = scalars.lr();
  launch.lr_ptr = scalars.lr_ptr();
  launch.lr_decay = a.lr_decay;
  launch.weight_decay = a.weight_decay;
  launch.eps = a.eps;
  launch.maximize = a.maximize;
  launch.grad_scale = scalars.grad_scale();
  launch.found_inf = scalars.found_inf();
  launch.update_norms = update_norms_rows(a.update_norms, device, a.params.size());

  launch_adagrad(launch, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  flat.write_back();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("adagrad_", &AdagradOverloads<adagrad_cuda>::scalar_lr);
  m.impl("adagrad_.tensor_lr", &AdagradOverloads<adagrad_cuda>::tensor_lr);
}

}  // namespace fastopt::cuda
