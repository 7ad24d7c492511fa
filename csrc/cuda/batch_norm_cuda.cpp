// fastopt::batch_norm_* on CUDA: layout and shape checks (common/norm_layout.h),
// device guard and stream, and the torch-free launches of
// kernels/batch_norm_kernel.cu, which also do the [C]-sized arithmetic
// between the passes. Only this layer sees tensors.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
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
// Every tensor argument but x goes through channel_stat, channel_weight or
// grad_like_x, which check its shape and then its device, as GroupNorm does:
// before it meets another tensor (where torch would raise for some mixes and
// not others) and before its pointer reaches a kernel.
at::Tensor channel_stat(const char* op, const char* name, const at::Tensor& t, const Input& in) {
  TORCH_CHECK(t.numel() == in.shape.C, op, ": expected ", name, " with ", in.shape.C,
              " elements, got ", t.sizes());
  check_device(op, name, t, in.x);
  return t.reshape({in.shape.C}).to(in.opmath).contiguous();
}

// A [C] weight or bias in the arithmetic type, or an undefined tensor.
at::Tensor channel_weight(const char* op, const char* name, const c10::optional<at::Tensor>& p,
                          const Input& in) {
  const at::Tensor t = channel_param(op, name, p, in.shape.C, in.opmath);
  check_device(op, name, t, in.x);
  return t;
}

at::Tensor new_stat(const Input& in) { return at::empty({in.shape.C}, in.x.options().dtype(in.opmath)); }

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

// NOTE: [per-channel arithmetic in kernels] (kernels/batch_norm_kernel.h):
// every helper below is one launch, and nothing between them is a torch op
// on the device.

// The moment shift of every channel (N * S > 0), NOTE: [moment shift].
at::Tensor channel_shift(const Input& in) {
  const auto [samples, positions] = shift_extent(in.shape.N, in.shape.S);
  at::Tensor shift = new_stat(in);
  launch_batch_norm_shift({in.shape, in.x.const_data_ptr(), shift.mutable_data_ptr(), samples, positions},
                          stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return shift;
}

// The partial sums of kernels/batch_norm_kernel.h over a non-empty x.
at::Tensor channel_partials(const Input& in, bool gradient, const at::Tensor& dy,
                            const at::Tensor& center) {
  at::Tensor workspace =
      at::empty({batch_norm_reduce_workspace(in.shape)}, in.x.options().dtype(at::kDouble));
  launch_batch_norm_reduce({in.shape, gradient, in.x.const_data_ptr(), ptr_or_null(dy),
                            center.const_data_ptr(), workspace.mutable_data_ptr<double>()},
                           stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return workspace;
}

// out = (x - center) * p + dy * q + r, coefficients [C] in the arithmetic
// type; dy and r may be undefined.
void affine(const Input& in, const at::Tensor& dy, const at::Tensor& out, const at::Tensor& center,
            const at::Tensor& p, const at::Tensor& q, const at::Tensor& r) {
  if (in.x.numel() == 0) return;
  launch_batch_norm_affine({in.shape, in.x.const_data_ptr(), ptr_or_null(dy), out.mutable_data_ptr(),
                            center.const_data_ptr(), p.const_data_ptr(), ptr_or_null(q), ptr_or_null(r)},
                           stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The statistics of a non-empty x from its moment sums, into the defined
// outputs (see BatchNormMomentsLaunch).
struct Moments {
  at::Tensor mean, m2, var, invstd, scale;
};

void moments(const Input& in, const at::Tensor& weight, double eps, Moments& out) {
  const at::Tensor shift = channel_shift(in);
  const at::Tensor workspace = channel_partials(in, false, {}, shift);
  launch_batch_norm_moments({in.shape, workspace.const_data_ptr<double>(), shift.const_data_ptr(),
                             ptr_or_null(weight), in.count(), eps, mutable_ptr_or_null(out.mean),
                             mutable_ptr_or_null(out.m2), mutable_ptr_or_null(out.var),
                             mutable_ptr_or_null(out.invstd), mutable_ptr_or_null(out.scale)},
                            stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  Moments m;
  m.mean = new_stat(in);
  m.m2 = new_stat(in);
  if (in.x.numel() == 0) return {m.mean.zero_(), m.m2.zero_()};
  moments(in, {}, 0.0, m);
  return {m.mean, m.m2};
}

void update_running_stats(const char* op, const c10::optional<at::Tensor>& running_mean,
                          const c10::optional<at::Tensor>& running_var, const at::Tensor& mean,
                          const at::Tensor& var, double momentum, int64_t count);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_fwd_cuda(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    double momentum) {
  constexpr const char* kOp = "fastopt.batch_norm_fwd";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input);
  const at::Tensor w = channel_weight(kOp, "weight", weight, in);
  const at::Tensor b = channel_weight(kOp, "bias", bias, in);
  at::Tensor y = at::empty_like(in.x);
  Moments m{new_stat(in), {}, new_stat(in), new_stat(in), {}};
  if (in.x.numel() == 0) {
    // As on the CPU: the statistics of an empty channel (mean 0, variance 0).
    m.mean.zero_();
    m.var.zero_();
    m.invstd.fill_(1.0 / std::sqrt(eps));
    return {y, m.mean, m.invstd, m.var};
  }
  m.scale = new_stat(in);  // invstd * weight
  moments(in, w, eps, m);
  affine(in, {}, y, m.mean, m.scale, {}, b);
  update_running_stats(kOp, running_mean, running_var, m.mean, m.var, momentum, in.count());
  return {y, m.mean, m.invstd, m.var};
}

at::Tensor batch_norm_apply_cuda(const at::Tensor& input, const at::Tensor& mean,
                                 const at::Tensor& invstd, const c10::optional<at::Tensor>& weight,
                                 const c10::optional<at::Tensor>& bias) {
  constexpr const char* kOp = "fastopt.batch_norm_apply";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor is = channel_stat(kOp, "invstd", invstd, in);
  const at::Tensor w = channel_weight(kOp, "weight", weight, in);
  const at::Tensor b = channel_weight(kOp, "bias", bias, in);
  at::Tensor y = at::empty_like(in.x);
  // invstd * weight in the arithmetic type: the product of two floats rounded
  // once, as the CPU op and the moments kernel form it.
  affine(in, {}, y, m, w.defined() ? is * w : is, {}, b);
  return y;
}

// The backward's sums and, with invstd, its coefficients and weight grads,
// into the defined tensors of `out` (see BatchNormGradientLaunch).
struct Gradient {
  at::Tensor p, q, r, sum_dy, sum_dy_xmu, grad_weight, grad_bias;
};

void gradient(const Input& in, const at::Tensor& workspace, const at::Tensor& sum_dy,
              const at::Tensor& sum_dy_xmu, const at::Tensor& invstd, const at::Tensor& weight,
              int64_t count, Gradient& out) {
  const DType grad_dtype =
      out.grad_weight.defined() ? kernel_dtype("fastopt.batch_norm_bwd", out.grad_weight.scalar_type())
                                : in.shape.dtype;
  launch_batch_norm_gradient(
      {in.shape, static_cast<const double*>(ptr_or_null(workspace)),
       ptr_or_null(sum_dy), ptr_or_null(sum_dy_xmu), ptr_or_null(invstd), ptr_or_null(weight), count,
       mutable_ptr_or_null(out.p), mutable_ptr_or_null(out.q), mutable_ptr_or_null(out.r),
       mutable_ptr_or_null(out.sum_dy), mutable_ptr_or_null(out.sum_dy_xmu), grad_dtype,
       mutable_ptr_or_null(out.grad_weight), mutable_ptr_or_null(out.grad_bias)},
      stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> batch_norm_bwd_reduce_cuda(const at::Tensor& grad_out,
                                                              const at::Tensor& input,
                                                              const at::Tensor& mean) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd_reduce";
  const c10::cuda::CUDAGuard guard(input.device());
  const Input in = prepare(kOp, input);
  const at::Tensor dy = grad_like_x(kOp, grad_out, in);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  Gradient g;
  g.sum_dy = new_stat(in);
  g.sum_dy_xmu = new_stat(in);
  if (in.x.numel() == 0) return {g.sum_dy.zero_(), g.sum_dy_xmu.zero_()};
  gradient(in, channel_partials(in, true, dy, m), {}, {}, {}, {}, in.count(), g);
  return {g.sum_dy, g.sum_dy_xmu};
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
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor is = channel_stat(kOp, "invstd", invstd, in);
  const at::Tensor w = channel_weight(kOp, "weight", weight, in);
  const at::Tensor a = channel_stat(kOp, "sum_dy", sum_dy, in);
  const at::Tensor b = channel_stat(kOp, "sum_dy_xmu", sum_dy_xmu, in);
  at::Tensor dx = at::empty_like(in.x);
  if (in.x.numel() == 0) return dx;
  Gradient g{new_stat(in), new_stat(in), new_stat(in), {}, {}, {}, {}};
  gradient(in, {}, a, b, is, w, count, g);
  affine(in, dy, dx, m, g.p, g.q, g.r);
  return dx;
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
  const at::Tensor w = channel_weight(kOp, "weight", weight, in);  // checked before any launch
  // grad_weight = sum dy * (x - mean) * invstd and grad_bias = sum dy, in the
  // weight's dtype (x's without a weight).
  const c10::ScalarType param_dtype = param_grad_dtype(weight, input);
  const auto param_options = in.x.options().dtype(param_dtype);
  at::Tensor dx = at::empty_like(in.x);
  if (in.x.numel() == 0) {
    return {dx, at::zeros({in.shape.C}, param_options), at::zeros({in.shape.C}, param_options)};
  }
  Gradient g{new_stat(in), new_stat(in), new_stat(in), {}, {},
             at::empty({in.shape.C}, param_options), at::empty({in.shape.C}, param_options)};
  gradient(in, channel_partials(in, true, dy, m), {}, {}, is, w, in.count(), g);
  affine(in, dy, dx, m, g.p, g.q, g.r);
  return {dx, g.grad_weight, g.grad_bias};
}

// As on the CPU: (1 - momentum) * running + momentum * statistic in double,
// rounded once into the buffer; the variance made unbiased. For
// batch_norm_update_stats_ and the update in batch_norm_fwd.
void update_running_stats(const char* kOp, const c10::optional<at::Tensor>& running_mean,
                          const c10::optional<at::Tensor>& running_var, const at::Tensor& mean,
                          const at::Tensor& var, double momentum, int64_t count) {
  const c10::cuda::CUDAGuard guard(mean.device());
  // Every tensor on mean's device, which the guard and the launches use,
  // before either buffer is written (checking a buffer against its own
  // statistic would pass a CPU pair, whose host pointers would then reach a kernel).
  for (const auto* running : {&running_mean, &running_var}) {
    if (running->has_value()) check_device(kOp, "running statistics", **running, mean);
  }
  check_device(kOp, "batch statistics", var, mean);
  for_each_running_stat(kOp, running_mean, running_var, mean, var, count,
                        [&](const at::Tensor& running, const at::Tensor& stat, double scale) {
    const DType dtype = kernel_dtype(kOp, running.scalar_type());
    // The kernel reads the statistic as float64 or float32 (exact for the 16-bit types).
    const bool is_double = stat.scalar_type() == at::kDouble;
    const at::Tensor s = (is_double ? stat : stat.to(at::kFloat)).contiguous();
    launch_batch_norm_running({dtype, running.mutable_data_ptr(), s.const_data_ptr(), is_double,
                               running.numel(), momentum, scale},
                              stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void batch_norm_update_stats_cuda(const c10::optional<at::Tensor>& running_mean,
                                  const c10::optional<at::Tensor>& running_var,
                                  const at::Tensor& mean, const at::Tensor& var, double momentum,
                                  int64_t count) {
  update_running_stats("fastopt.batch_norm_update_stats_", running_mean, running_var, mean, var,
                       momentum, count);
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
