// fastopt::sgd_ on CUDA: validation, then the shared OptimizerCall (device
// guard, stream, pointers) and the torch-free launch in kernels/sgd_kernel.cu.
// Only this layer sees tensors.
#include <torch/library.h>

#include "common/sgd_op.h"
#include "cuda/kernels/sgd_kernel.h"
#include "cuda/optimizer_cuda.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.sgd_";

void sgd_cuda(const SgdArgs& a) {
  check_sgd_args(a, c10::DeviceType::CUDA);
  if (a.params.empty()) return;

  // SGD keeps no step counter.
  OptimizerCall call(kOp, a, {}, {{"momentum_buffers", a.momentum_buffers, true}});
  SgdLaunch launch{};
  launch.common = call.common();
  launch.momentum_buffers = call.state(0);  // null when momentum == 0
  launch.momentum = a.momentum;
  launch.dampening = a.dampening;
  launch.weight_decay = a.weight_decay;
  launch.nesterov = a.nesterov;
  launch.maximize = a.maximize;
  launch.is_first_step = a.is_first_step;
  launch_sgd(launch, call.stream());
  call.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("sgd_", &SgdOverloads<sgd_cuda>::scalar_lr);
  m.impl("sgd_.tensor_lr", &SgdOverloads<sgd_cuda>::tensor_lr);
}

}  // namespace fastopt::cuda
