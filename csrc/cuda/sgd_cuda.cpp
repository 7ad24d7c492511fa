// fastopt::sgd_ on CUDA: validation, device guard and stream, then the
// torch-free launch in kernels/sgd_kernel.cu. Only this layer sees tensors.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/sgd_op.h"
#include "common/tensor_lists.h"
#include "cuda/kernels/sgd_kernel.h"
#include "cuda/optimizer_cuda.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.sgd_";

void sgd_cuda(const SgdArgs& a) {
  check_sgd_args(a, c10::DeviceType::CUDA);
  reject_param_storage(kOp, a.param_copies, a.rounding_seed, a.hparams);
  if (a.params.empty()) return;

  const c10::Device device = a.params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const DeviceScalars scalars(device, a.lr, a.lr_tensor, a.grad_scale, a.found_inf);

  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, scalars.grad_scale() != nullptr},
                        {"momentum_buffers", a.momentum_buffers, true}});
  const LaunchPointers ptrs(flat, 3);

  SgdLaunch launch{};
  launch.num_tensors = ptrs.num_tensors();
  launch.params = ptrs.list(0);
  launch.grads = ptrs.list(1);
  launch.momentum_buffers = ptrs.list(2);
  launch.numels = ptrs.numels();
  launch.dtype = kernel_dtype(kOp, a.params[0].scalar_type());
  launch.lr = scalars.lr();
  launch.lr_ptr = scalars.lr_ptr();
  launch.momentum = a.momentum;
  launch.dampening = a.dampening;
  launch.weight_decay = a.weight_decay;
  launch.nesterov = a.nesterov;
  launch.maximize = a.maximize;
  launch.is_first_step = a.is_first_step;
  launch.grad_scale = scalars.grad_scale();
  launch.found_inf = scalars.found_inf();
  launch.update_norms = update_norms_rows(a.update_norms, device, a.params.size());

  launch_sgd(launch, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  flat.write_back();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("sgd_", &SgdOverloads<sgd_cuda>::scalar_lr);
  m.impl("sgd_.tensor_lr", &SgdOverloads<sgd_cuda>::tensor_lr);
}

}  // namespace fastopt::cuda
