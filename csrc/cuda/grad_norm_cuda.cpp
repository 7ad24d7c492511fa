// fastopt::grad_norm on CUDA: checks, device guard and stream, then the
// torch-free launches in kernels/grad_norm_kernel.cu, one per gradient dtype,
// all folding into one device accumulator. Nothing is read back to the host.
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <map>
#include <tuple>
#include <vector>

#include "common/grad_norm_op.h"
#include "cuda/kernel_dtype.h"
#include "cuda/kernels/grad_norm_kernel.h"

namespace fastopt::cuda {
namespace {

constexpr const char* kOp = "fastopt.grad_norm";

std::tuple<at::Tensor, at::Tensor> grad_norm_cuda(at::TensorList grads, double norm_type) {
  check_grad_norm_args(grads, norm_type, c10::DeviceType::CUDA);
  const c10::Device device = grads.empty() ? c10::Device(c10::kCUDA, c10::cuda::current_device())
                                           : grads[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::ScalarType out_dtype = grad_norm_dtype(grads);
  const NormKind kind = norm_kind(norm_type);
  const auto on_device = at::TensorOptions().device(device);
  at::Tensor acc = at::empty({2}, on_device.dtype(at::kDouble));
  at::Tensor norm = at::empty({}, on_device.dtype(out_dtype));
  at::Tensor nonfinite = at::empty({}, on_device.dtype(at::kFloat));

  // One launch per dtype present, over that dtype's tensors.
  std::vector<at::Tensor> flat;
  flat.reserve(grads.size());
  std::map<int, std::pair<std::vector<void*>, std::vector<int64_t>>> by_dtype;
  bool empty = true;  // no element in any tensor
  for (const at::Tensor& g : grads) {
    flat.push_back(flat_for_norm(g));
    auto& [ptrs, numels] = by_dtype[static_cast<int>(kernel_dtype(kOp, g.scalar_type()))];
    ptrs.push_back(flat.back().data_ptr());
    numels.push_back(g.numel());
    empty = empty && g.numel() == 0;
  }
  launch_grad_norm_init(kind, empty, acc.mutable_data_ptr<double>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (const auto& [dtype, lists] : by_dtype) {
    GradNormLaunch launch{};
    launch.num_tensors = static_cast<int64_t>(lists.first.size());
    launch.grads = lists.first.data();
    launch.numels = lists.second.data();
    launch.dtype = static_cast<DType>(dtype);
    launch.kind = kind;
    launch.p = norm_type;
    launch.acc = acc.mutable_data_ptr<double>();
    launch_grad_norm(launch, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  launch_grad_norm_finish(kind, norm_type, acc.const_data_ptr<double>(), norm.mutable_data_ptr(),
                          out_dtype == at::kDouble, nonfinite.mutable_data_ptr<float>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {norm, nonfinite};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) { m.impl("grad_norm", &grad_norm_cuda); }

}  // namespace fastopt::cuda
