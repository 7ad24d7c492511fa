// fastopt::adagrad_ on CUDA: validation, then the shared OptimizerCall (device
// guard, stream, pointers) and the torch-free launch in
// kernels/adagrad_kernel.cu. Only this layer sees tensors.
#include <torch/library.h>

#include "common/adagrad_op.h"
#include "cuda/kernels/adagrad_kernel.h"
#include "cuda/optimizer_cuda.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.adagrad_";

void adagrad_cuda(const AdagradArgs& a) {
  // Also checks that the step counters are on the params' device.
  check_adagrad_args(a, c10::DeviceType::CUDA);
  if (a.params.empty()) return;

  OptimizerCall call(kOp, a, a.state_steps, {{"state_sums", a.state_sums, true}});
  AdagradLaunch launch{};
  launch.common = call.common();
  launch.state_sums = call.state(0);
  launch.lr_decay = a.lr_decay;
  launch.weight_decay = a.weight_decay;
  launch.eps = a.eps;
  launch.maximize = a.maximize;
  launch_adagrad(launch, call.stream());
  call.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("adagrad_", &AdagradOverloads<adagrad_cuda>::scalar_lr);
  m.impl("adagrad_.tensor_lr", &AdagradOverloads<adagrad_cuda>::tensor_lr);
}

}  // namespace fastopt::cuda
