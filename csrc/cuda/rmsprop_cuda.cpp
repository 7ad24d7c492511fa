// fastopt::rmsprop_ on CUDA: validation, device guard and stream, then the
// torch-free launch in kernels/rmsprop_kernel.cu. Only this layer sees tensors.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "common/rmsprop_op.h"
#include "common/tensor_lists.h"
#include "cuda/kernels/rmsprop_kernel.h"
#include "cuda/optimizer_cuda.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.rmsprop_";

void rmsprop_cuda(const RMSpropArgs& a) {
  // Also checks that the step counters are on the params' device.
  check_rmsprop_args(a, c10::DeviceType::CUDA);
  reject_param_storage(kOp, a.param_copies, a.rounding_seed, a.hparams);
  if (a.params.empty()) return;

  const c10::Device device = a.params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const std::vector<float*> steps = step_pointers(kOp, a.state_steps);
  const DeviceScalars scalars(device, a.lr, a.lr_tensor, a.grad_scale, a.found_inf);

  FlatTensorLists flat({{"params", a.params, true},
                        {"grads", a.grads, scalars.grad_scale() != nullptr},
                        {"square_avgs", a.square_avgs, true},
                        {"grad_avgs", a.grad_avgs, true},
                        {"momentum_buffers", a.momentum_buffers, true}});
  const LaunchPointers ptrs(flat, 5);

  RMSpropLaunch launch{};
  launch.num_tensors = ptrs.num_tensors();
  launch.params = ptrs.list(0);
  launch.grads = ptrs.list(1);
  launch.square_avgs = ptrs.list(2);
  launch.grad_avgs = ptrs.list(3);  // null unless centered
  launch.momentum_buffers = ptrs.list(4);  // null without momentum
  launch.steps = steps.data();
  launch.numels = ptrs.numels();
  launch.dtype = kernel_dtype(kOp, a.params[0].scalar_type());
  launch.lr = scalars.lr();
  launch.lr_ptr = scalars.lr_ptr();
  launch.alpha = a.alpha;
  launch.eps = a.eps;
  launch.weight_decay = a.weight_decay;
  launch.momentum = a.momentum;
  launch.centered = a.centered;
  launch.maximize = a.maximize;
  launch.grad_scale = scalars.grad_scale();
  launch.found_inf = scalars.found_inf();
  launch.update_norms = update_norms_rows(a.update_norms, device, a.params.size());

  launch_rmsprop(launch, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  flat.write_back();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("rmsprop_", &RMSpropOverloads<rmsprop_cuda>::scalar_lr);
  m.impl("rmsprop_.tensor_lr", &RMSpropOverloads<rmsprop_cuda>::tensor_lr);
}

}  // namespace fastopt::cuda
