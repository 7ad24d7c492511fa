// fastopt::rmsprop_ on CUDA: validation, then the shared OptimizerCall (device
// guard, stream, pointers) and the torch-free launch in
// kernels/rmsprop_kernel.cu. Only this layer sees tensors.
#include <torch/library.h>

#include "common/rmsprop_op.h"
#include "cuda/kernels/rmsprop_kernel.h"
#include "cuda/optimizer_cuda.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.rmsprop_";

void rmsprop_cuda(const RMSpropArgs& a) {
  // Also checks that the step counters are on the params' device.
  check_rmsprop_args(a, c10::DeviceType::CUDA);
  if (a.params.empty()) return;

  OptimizerCall call(kOp, a, a.state_steps,
                     {{"square_avgs", a.square_avgs, true},
                      {"grad_avgs", a.grad_avgs, true},
                      {"momentum_buffers", a.momentum_buffers, true}});
  RMSpropLaunch launch{};
  launch.common = call.common();
  launch.square_avgs = call.state(0);
  launch.grad_avgs = call.state(1);         // null unless centered
  launch.momentum_buffers = call.state(2);  // null without momentum
  launch.alpha = a.alpha;
  launch.eps = a.eps;
  launch.weight_decay = a.weight_decay;
  launch.momentum = a.momentum;
  launch.centered = a.centered;
  launch.maximize = a.maximize;
  launch_rmsprop(launch, call.stream());
  call.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("rmsprop_", &RMSpropOverloads<rmsprop_cuda>::scalar_lr);
  m.impl("rmsprop_.tensor_lr", &RMSpropOverloads<rmsprop_cuda>::tensor_lr);
}

}  // namespace fastopt::cuda
