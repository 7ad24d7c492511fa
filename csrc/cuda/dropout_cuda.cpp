// fastopt::dropout, dropout_ and dropout_add on CUDA: the shared validation
// (common/dropout_op.h), device guard and stream, then the torch-free launch
// in kernels/dropout_kernel.cu. Only this layer sees tensors.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/dropout_op.h"
#include "cuda/kernel_dtype.h"
#include "cuda/kernels/dropout_kernel.h"

namespace fastopt::cuda {
namespace {

// The DropoutRunFn of CUDA. The seed words stay on the device: the kernel
// reads them, so nothing here synchronises and graph capture works.
void run_dropout(const DropoutInputs& in, const at::Tensor& seed, double p, const at::Tensor& out) {
  if (in.x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(in.x.device());
  // With a stored mask (bits_in) there is no draw and no seed.
  const at::Tensor words = in.bits_in.defined() ? at::Tensor() : seed.contiguous();
  const DropoutMaskParams mask = dropout_mask_params(p);
  auto ptr = [](const at::Tensor& t) -> const void* { return t.defined() ? t.const_data_ptr() : nullptr; };

  DropoutLaunch launch{};
  launch.dtype = kernel_dtype("fastopt.dropout", in.x.scalar_type());
  launch.x = ptr(in.x);
  launch.bias = ptr(in.bias);
  launch.residual = ptr(in.residual);
  launch.out = out.mutable_data_ptr();
  launch.bits_out = in.bits_out.defined() ? in.bits_out.mutable_data_ptr<uint8_t>() : nullptr;
  launch.bits_in = in.bits_in.defined() ? in.bits_in.const_data_ptr<uint8_t>() : nullptr;
  launch.numel = in.x.numel();
  launch.group = in.group;
  launch.bias_numel = in.bias.defined() ? in.bias.numel() : 0;
  launch.seed = words.defined() ? words.const_data_ptr<int64_t>() : nullptr;
  launch.threshold = mask.threshold;
  launch.drop_all = mask.drop_all;
  launch.keep_prob = mask.keep_prob;

  launch_dropout(launch, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor empty_like_x(const at::Tensor& x) { return at::empty_like(x); }

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  // The CUDA kernel works in the logical order only: a channels-last input of
  // channel-wise dropout goes through a contiguous copy (NOTE: [dropout memory format]).
  using Ops = DropoutOps<run_dropout, &empty_like_x, c10::DeviceType::CUDA, /*NATIVE_CHANNELS_LAST=*/false>;
  m.impl("dropout", &Ops::dropout);
  m.impl("dropout_", &Ops::dropout_);
  m.impl("dropout_add", &Ops::dropout_add);
  m.impl("dropout_bits", &Ops::dropout_bits);
  m.impl("dropout_from_bits", &Ops::dropout_from_bits);
}

}  // namespace fastopt::cuda
