// fastopt::adam_ on CUDA: validation, then the shared OptimizerCall (device
// guard, stream, pointers) and the torch-free launch in kernels/adam_kernel.cu.
// Only this layer sees tensors.
#include <torch/library.h>

#include "common/adam_op.h"
#include "cuda/kernels/adam_kernel.h"
#include "cuda/optimizer_cuda.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.adam_";

void adam_cuda(const AdamArgs& a) {
  // Also checks that the step counters are on the params' device.
  check_adam_args(a, c10::DeviceType::CUDA);
  if (a.params.empty()) return;

  OptimizerCall call(kOp, a, a.state_steps,
                     {{"exp_avgs", a.exp_avgs, true},
                      {"exp_avg_sqs", a.exp_avg_sqs, true},
                      {"max_exp_avg_sqs", a.max_exp_avg_sqs, true}});
  AdamLaunch launch{};
  launch.common = call.common();
  launch.exp_avgs = call.state(0);
  launch.exp_avg_sqs = call.state(1);
  launch.max_exp_avg_sqs = call.state(2);  // null unless amsgrad
  launch.beta1 = a.beta1;
  launch.beta2 = a.beta2;
  launch.weight_decay = a.weight_decay;
  launch.eps = a.eps;
  launch.amsgrad = a.amsgrad;
  launch.maximize = a.maximize;
  launch.adamw = a.decoupled_weight_decay;
  launch_adam(launch, call.stream());
  call.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("adam_", &AdamOverloads<adam_cuda>::scalar_lr);
  m.impl("adam_.tensor_lr", &AdamOverloads<adam_cuda>::tensor_lr);
}

}  // namespace fastopt::cuda
