// fastopt::group_norm_fwd / group_norm_bwd on CUDA: the same checks and view
// of x as the CPU op (common/group_norm_shape.h, common/norm_layout.h),
// device guard and stream, outputs in x's layout, and the torch-free launches
// of kernels/group_norm_kernel.cu. Only this layer sees tensors.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "common/group_norm_shape.h"
#include "common/norm_layout.h"
#include "cuda/norm_checks.h"
#include "cuda/kernels/group_norm_kernel.h"

namespace fastopt::cuda {
namespace {

using namespace ::fastopt::norm;

struct Input {
  at::Tensor x;  // in a layout the kernels read
  GroupNormShape shape;
  c10::ScalarType opmath;
};

Input prepare(const char* op, const at::Tensor& input, int64_t groups, int64_t activation,
              int64_t normalized_ndim) {
  GroupNormDims dims = group_norm_dims(op, input, groups, normalized_ndim);
  const DType dtype = norm_kernel_dtype(op, input.scalar_type());
  Input in;
  in.x = group_norm_input(input, normalized_ndim, dims);
  prefer_rows(dims);
  in.shape = GroupNormShape{dtype,  dims.N, dims.C, dims.S, dims.G, dims.channels_last,
                            norm_activation(op, activation)};
  in.opmath = at::toOpMathType(input.scalar_type());
  return in;
}

at::Tensor workspace(const at::Tensor& x, int64_t bytes) {
  return at::empty({bytes}, x.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd_cuda(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, int64_t groups, double eps, int64_t activation,
    int64_t normalized_ndim) {
  constexpr const char* kOp = "fastopt.group_norm_fwd";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input, groups, activation, normalized_ndim);
  const GroupNormShape& s = in.shape;
  const at::Tensor gamma = channel_param(kOp, "weight", weight, s.C, in.opmath);
  const at::Tensor beta = channel_param(kOp, "bias", bias, s.C, in.opmath);
  check_device(kOp, "weight", gamma, in.x);
  check_device(kOp, "bias", beta, in.x);
  at::Tensor y = at::empty_like(in.x);  // keeps the (dense) layout of x
  at::Tensor mean = at::empty({s.N, s.G}, in.x.options().dtype(in.opmath));
  at::Tensor rstd = at::empty({s.N, s.G}, mean.options());
  if (in.x.numel() == 0) return {y, mean.zero_(), rstd.zero_()};  // as on the CPU
  at::Tensor work = workspace(in.x, group_norm_fwd_workspace(s));
  const GroupNormFwdLaunch launch{s,
                                  eps,
                                  in.x.const_data_ptr(),
                                  ptr_or_null(gamma),
                                  ptr_or_null(beta),
                                  y.mutable_data_ptr(),
                                  mean.mutable_data_ptr(),
                                  rstd.mutable_data_ptr(),
                                  work.mutable_data_ptr()};
  launch_group_norm_fwd(launch, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, int64_t groups, int64_t activation,
    int64_t normalized_ndim) {
  constexpr const char* kOp = "fastopt.group_norm_bwd";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input, groups, activation, normalized_ndim);
  const GroupNormShape& s = in.shape;
  check_backward_args(kOp, grad_out, input, mean, rstd,
                      GroupNormDims{s.N, s.C, s.S, s.G, s.channels_last});
  // Checked before like_layout, whose copy into x's layout would otherwise
  // move a grad_out of another device (but only when its strides differ).
  check_device(kOp, "grad_out", grad_out, in.x);
  // dy in x's layout: a copy only when autograd hands over another layout.
  const at::Tensor dy = like_layout(grad_out, in.x);
  const at::Tensor mean_c = mean.to(in.opmath).contiguous();
  const at::Tensor rstd_c = rstd.to(in.opmath).contiguous();
  const at::Tensor gamma = channel_param(kOp, "weight", weight, s.C, in.opmath);
  const at::Tensor beta = channel_param(kOp, "bias", bias, s.C, in.opmath);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"mean", mean_c},
                                {"rstd", rstd_c}, {"weight", gamma}, {"bias", beta}}) {
    check_device(kOp, name, t, in.x);
  }
  at::Tensor dx = at::empty_like(in.x);
  // Two separate tensors: outputs must not alias one another.
  at::Tensor dgamma = at::empty({s.C}, mean_c.options());
  at::Tensor dbeta = at::empty({s.C}, mean_c.options());
  if (in.x.numel() == 0) {  // nothing to sum
    dgamma.zero_();
    dbeta.zero_();
  } else {
    at::Tensor work = workspace(in.x, group_norm_bwd_workspace(s));
    const GroupNormBwdLaunch launch{s,
                                    dy.const_data_ptr(),
                                    in.x.const_data_ptr(),
                                    mean_c.const_data_ptr(),
                                    rstd_c.const_data_ptr(),
                                    ptr_or_null(gamma),
                                    ptr_or_null(beta),
                                    dx.mutable_data_ptr(),
                                    dgamma.mutable_data_ptr(),
                                    dbeta.mutable_data_ptr(),
                                    work.mutable_data_ptr()};
    launch_group_norm_bwd(launch, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const c10::ScalarType param_dtype = param_grad_dtype(weight, input);
  return {dx, dgamma.to(param_dtype), dbeta.to(param_dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("group_norm_fwd", &group_norm_fwd_cuda);
  m.impl("group_norm_bwd", &group_norm_bwd_cuda);
}

}  // namespace fastopt::cuda
