// fastopt::batch_norm_* on CUDA: layout and shape checks (common/norm_layout.h),
// device guard and stream, the torch-free launches of
// kernels/batch_norm_kernel.cu, and the [C]-sized arithmetic between them as
// tensor ops in double. Only this layer sees tensors.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/norm_layout.h"
#include "cuda/norm_checks.h"
#include "cuda/kernels/batch_norm_kernel.h"

namespace fastopt::cuda {
namespace {

using namespace ::fastopt::norm;

struct Input {
  at::Tensor x;
  BatchNormShape shape;
  c10::ScalarType opmath;
  int64_t count() const { return shape.N * shape.S; }  // values per channel
};

Input prepare(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.dim() >= 2, op, ": expected an input of shape (N, C, *), got ",
              input.sizes());
  Input in;
  const DType dtype = norm_kernel_dtype(op, input.scalar_type());
  bool channels_last = false;
  in.x = native_layout(input, channels_last);
  int64_t S = 1;
  for (int64_t d = 2; d < input.dim(); ++d) S *= input.size(d);
  in.shape = BatchNormShape{dtype, input.size(0), input.size(1), S, channels_last || S == 1};
  in.opmath = at::toOpMathType(input.scalar_type());
  return in;
}

// A [C] statistic (mean, invstd, a sum) in the arithmetic type, contiguous.
// Every tensor argument but x goes through channel_stat, weight_or_one,
// bias_or_zero or grad_like_x, which check its shape and then its device, as
// GroupNorm does: before it meets another tensor (where torch would raise for
// some mixes and not others) and before its pointer reaches a kernel.
at::Tensor channel_stat(const char* op, const char* name, const at::Tensor& t, const Input& in) {
  TORCH_CHECK(t.numel() == in.shape.C, op, ": expected ", name, " with ", in.shape.C,
              " elements, got ", t.sizes());
  check_device(op, name, t, in.x);
  return t.reshape({in.shape.C}).to(in.opmath).contiguous();
}

// [2, C] double: the per-channel sums of kernels/batch_norm_kernel.h.
at::Tensor channel_sums(const Input& in, bool gradient, const at::Tensor& dy,
                        const at::Tensor& center) {
  const auto f64 = in.x.options().dtype(at::kDouble);
  if (in.x.numel() == 0) return at::zeros({2, in.shape.C}, f64);
  at::Tensor workspace = at::empty({batch_norm_reduce_workspace(in.shape)}, f64);
  at::Tensor sums = at::empty({2, in.shape.C}, f64);
  BatchNormReduceLaunch launch{in.shape,
                               gradient,
                               in.x.const_data_ptr(),
                               ptr_or_null(dy),
                               center.const_data_ptr(),
                               workspace.mutable_data_ptr<double>(),
                               sums.mutable_data_ptr<double>()};
  launch_batch_norm_reduce(launch, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return sums;
}

// out = (x - center) * p + dy * q + r, coefficients [C] in the arithmetic type.
void affine(const Input& in, const at::Tensor& dy, const at::Tensor& out, const at::Tensor& center,
            const at::Tensor& p, const at::Tensor& q, const at::Tensor& r) {
  if (in.x.numel() == 0) return;
  auto coef = [&](const at::Tensor& t) { return t.defined() ? t.to(in.opmath).contiguous() : t; };
  const at::Tensor k = coef(center), pc = coef(p), qc = coef(q), rc = coef(r);
  BatchNormAffineLaunch launch{in.shape,      in.x.const_data_ptr(),   ptr_or_null(dy),
                               out.mutable_data_ptr(), k.const_data_ptr(), pc.const_data_ptr(),
                               ptr_or_null(qc), rc.const_data_ptr()};
  launch_batch_norm_affine(launch, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// mean and M2 of every channel (double), from moment sums shifted as in
// NOTE: [moment shift] (common/moment_shift.h).
std::tuple<at::Tensor, at::Tensor> moments(const Input& in) {
  const int64_t C = in.shape.C;
  const auto f64 = in.x.options().dtype(at::kDouble);
  if (in.x.numel() == 0) return {at::zeros({C}, f64), at::zeros({C}, f64)};
  const at::Tensor shift = channel_shift(in.x, in.opmath);
  const at::Tensor sums = channel_sums(in, false, {}, shift);
  const at::Tensor d = sums[0] / static_cast<double>(in.count());
  return {shift.to(at::kDouble) + d, (sums[1] - sums[0] * d).clamp_min(0)};
}

at::Tensor weight_or_one(const c10::optional<at::Tensor>& weight, const Input& in, const char* op) {
  const at::Tensor w = channel_param(op, "weight", weight, in.shape.C, at::kDouble);
  check_device(op, "weight", w, in.x);
  return w.defined() ? w : at::ones({in.shape.C}, in.x.options().dtype(at::kDouble));
}

// The [C] bias in the arithmetic type, zeros without one.
at::Tensor bias_or_zero(const c10::optional<at::Tensor>& bias, const Input& in, const char* op) {
  const at::Tensor b = channel_param(op, "bias", bias, in.shape.C, in.opmath);
  check_device(op, "bias", b, in.x);
  return b.defined() ? b : at::zeros({in.shape.C}, in.x.options().dtype(in.opmath));
}

// grad_out in x's layout. Its device is checked before like_layout, whose
// copy (only when the strides differ) would otherwise move it to x's device
// in some calls and pass a host pointer to the kernels in the others.
at::Tensor grad_like_x(const char* op, const at::Tensor& grad_out, const Input& in) {
  TORCH_CHECK(grad_out.sizes() == in.x.sizes(), op, ": grad_out has shape ", grad_out.sizes(),
              " but the input has shape ", in.x.sizes());
  check_device(op, "grad_out", grad_out, in.x);
  return like_layout(grad_out, in.x);
}

std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cuda(const at::Tensor& input) {
  constexpr const char* kOp = "fastopt.batch_norm_stats";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input);
  auto [mean, m2] = moments(in);
  return {mean.to(in.opmath), m2.to(in.opmath)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_fwd_cuda(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps) {
  constexpr const char* kOp = "fastopt.batch_norm_fwd";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input);
  const at::Tensor w = weight_or_one(weight, in, kOp);
  const at::Tensor b = bias_or_zero(bias, in, kOp);
  auto [mean, m2] = moments(in);
  // An empty batch gives mean 0 and variance 0, as on the CPU.
  const at::Tensor var = m2 / static_cast<double>(std::max<int64_t>(in.count(), 1));
  const at::Tensor invstd = (var + eps).rsqrt();
  at::Tensor y = at::empty_like(in.x);
  affine(in, {}, y, mean, invstd * w, {}, b);
  return {y, mean.to(in.opmath), invstd.to(in.opmath), var.to(in.opmath)};
}

at::Tensor batch_norm_apply_cuda(const at::Tensor& input, const at::Tensor& mean,
                                 const at::Tensor& invstd, const c10::optional<at::Tensor>& weight,
                                 const c10::optional<at::Tensor>& bias) {
  constexpr const char* kOp = "fastopt.batch_norm_apply";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor p = channel_stat(kOp, "invstd", invstd, in).to(at::kDouble) * weight_or_one(weight, in, kOp);
  const at::Tensor r = bias_or_zero(bias, in, kOp);
  at::Tensor y = at::empty_like(in.x);
  affine(in, {}, y, m, p, {}, r);
  return y;
}

std::tuple<at::Tensor, at::Tensor> batch_norm_bwd_reduce_cuda(const at::Tensor& grad_out,
                                                              const at::Tensor& input,
                                                              const at::Tensor& mean) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd_reduce";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input);
  const at::Tensor dy = grad_like_x(kOp, grad_out, in);
  const at::Tensor sums = channel_sums(in, true, dy, channel_stat(kOp, "mean", mean, in));
  return {sums[0].to(in.opmath), sums[1].to(in.opmath)};
}

// dx = (x - mean) * p + dy * q + r: q = invstd * w, p = -q * invstd^2 * sum_dy_xmu / n,
// r = -q * sum_dy / n.
at::Tensor input_grad(const Input& in, const at::Tensor& dy, const at::Tensor& mean,
                      const at::Tensor& invstd, const at::Tensor& w, const at::Tensor& sum_dy,
                      const at::Tensor& sum_dy_xmu, int64_t count) {
  at::Tensor dx = at::empty_like(in.x);
  const at::Tensor is = invstd.to(at::kDouble);
  const at::Tensor q = is * w;
  const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(count, 1));
  affine(in, dy, dx, mean, -q * is * is * sum_dy_xmu.to(at::kDouble) * inv_n, q,
         -q * sum_dy.to(at::kDouble) * inv_n);
  return dx;
}

at::Tensor batch_norm_bwd_elemt_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                     const at::Tensor& mean, const at::Tensor& invstd,
                                     const c10::optional<at::Tensor>& weight,
                                     const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu,
                                     int64_t count) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd_elemt";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input);
  const at::Tensor dy = grad_like_x(kOp, grad_out, in);
  TORCH_CHECK(count > 0 || input.numel() == 0, kOp, ": count must be positive, got ", count);
  return input_grad(in, dy, channel_stat(kOp, "mean", mean, in),
                    channel_stat(kOp, "invstd", invstd, in), weight_or_one(weight, in, kOp),
                    channel_stat(kOp, "sum_dy", sum_dy, in),
                    channel_stat(kOp, "sum_dy_xmu", sum_dy_xmu, in), count);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::optional<at::Tensor>& weight) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input);
  const at::Tensor dy = grad_like_x(kOp, grad_out, in);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor is = channel_stat(kOp, "invstd", invstd, in);
  const at::Tensor w = weight_or_one(weight, in, kOp);  // checked before any launch
  const at::Tensor sums = channel_sums(in, true, dy, m);
  const at::Tensor dx = input_grad(in, dy, m, is, w, sums[0], sums[1], in.count());
  const c10::ScalarType param_dtype =
      weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();
  return {dx, (sums[1] * is.to(at::kDouble)).to(param_dtype), sums[0].to(param_dtype)};
}

// As on the CPU: (1 - momentum) * running + momentum * statistic in double,
// rounded once into the buffer; the variance made unbiased.
void batch_norm_update_stats_cuda(const c10::optional<at::Tensor>& running_mean,
                                  const c10::optional<at::Tensor>& running_var,
                                  const at::Tensor& mean, const at::Tensor& var, double momentum,
                                  int64_t count) {
  constexpr const char* kOp = "fastopt.batch_norm_update_stats_";
  TORCH_CHECK(count > 1, kOp, ": count must be at least 2, got ", count);
  const c10::cuda::CUDAGuard guard(mean.device());
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  auto update = [&](const c10::optional<at::Tensor>& running, const at::Tensor& stat, double scale) {
    if (!running.has_value() || !running->defined()) return;
    TORCH_CHECK(running->numel() == stat.numel(), kOp, ": expected running statistics with ",
                stat.numel(), " elements, got ", running->numel());
    running->copy_(running->to(at::kDouble) * (1.0 - momentum) +
                   stat.reshape(running->sizes()).to(at::kDouble) * (momentum * scale));
  };
  update(running_mean, mean, 1.0);
  update(running_var, var, unbias);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CUDA, m) {
  m.impl("batch_norm_stats", &batch_norm_stats_cuda);
  m.impl("batch_norm_fwd", &batch_norm_fwd_cuda);
  m.impl("batch_norm_apply", &batch_norm_apply_cuda);
  m.impl("batch_norm_bwd", &batch_norm_bwd_cuda);
  m.impl("batch_norm_bwd_reduce", &batch_norm_bwd_reduce_cuda);
  m.impl("batch_norm_bwd_elemt", &batch_norm_bwd_elemt_cuda);
  m.impl("batch_norm_update_stats_", &batch_norm_update_stats_cuda);
}

}  // namespace fastopt::cuda
