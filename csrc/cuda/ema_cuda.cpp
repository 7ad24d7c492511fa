// fastopt::ema_ on CUDA: validation, device guard and stream, then the
// torch-free launch in kernels/ema_kernel.cu.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "common/ema_op.h"
#include "common/tensor_lists.h"
#include "cuda/kernels/ema_kernel.h"
#include "cuda/optimizer_cuda.h"

namespace fastopt::cuda {
namespace {

void ema_cuda(at::TensorList shadow, at::TensorList params, double decay) {
  check_ema_args(shadow, params, decay, c10::DeviceType::CUDA);
  if (shadow.empty()) return;

  const c10::cuda::CUDAGuard guard(shadow[0].device());
  // The shadow is list 0: a non-dense param is walked in the shadow's layout.
  FlatTensorLists flat({{"shadow", shadow, true}, {"params", params, false}});

  EmaLaunch launch{};
  launch.num_tensors = static_cast<int64_t>(flat.size());
  launch.shadow = flat.list_data(0);
  launch.params = flat.list_data(1);
  launch.numels = flat.numels();
  launch.dtype = kernel_dtype("fastopt.ema_", shadow[0].scalar_type());
  launch.decay = decay;

  launch_ema(launch, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  flat.write_back();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("ema_", &ema_cuda);
  m.impl("ema_.tensor_decay", &ema_tensor_decay<ema_cuda>);
}

}  // namespace fastopt::cuda
