// fastopt::batch_norm_* on the CPU: shape and layout checks, per-channel
// coefficients in double, and the per-ISA reduction and affine kernels
// (cpu/kernels/batch_norm_kernel.h) under at::parallel_for.
//
// Work is split so that both layouts keep every thread busy:
//   * channels first ([N, C, S]): by channel. The fused training ops
//     (batch_norm_fwd, batch_norm_bwd) finish one channel before the next:
//     its sums, then its elementwise pass, which rereads the channel's N
//     planes from cache instead of from memory;
//   * channels last ([R, C] rows): by blocks of rows, each block summing
//     into its own partial row; the partials are added in block order, so the
//     result does not depend on the thread count.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "cpu/kernels/batch_norm_kernel.h"
#include "common/norm_layout.h"

namespace fastopt::cpu {
namespace {

using namespace ::fastopt::norm;

constexpr int64_t kBlocks = 64;
// Elements per parallel task of the elementwise pass.
constexpr int64_t kGrainElements = 32768;
// Outputs at least this large are written with non-temporal stores: they
// cannot stay in the caches (1 MB L2 per core, a shared L3) until the next
// layer reads them, and ordinary stores would first read every line.
constexpr int64_t kStreamBytes = int64_t{8} << 20;

// x and its view as the kernels see it.
struct Input {
  at::Tensor x;
  BatchNormConfig cfg;
  c10::ScalarType opmath;
  int64_t count() const { return cfg.N * cfg.S; }  // values per channel
};

Input prepare(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.dim() >= 2, op, ": expected an input of shape (N, C, *), got ",
              input.sizes());
  check_dtype(op, input.scalar_type());
  Input in;
  bool channels_last = false;
  in.x = native_layout(input, channels_last);
  int64_t S = 1;
  for (int64_t d = 2; d < input.dim(); ++d) S *= input.size(d);
  // At S = 1, (N, C) rows: both layouts are the same memory, and the rows
  // kernels, which vectorize along the channels, are the fast ones.
  in.cfg = BatchNormConfig{in.x.scalar_type(), input.size(0), input.size(1), S,
                           channels_last || S == 1};
  in.opmath = at::toOpMathType(in.x.scalar_type());
  return in;
}

// A [C] statistic (mean, invstd, a sum) in the arithmetic type, contiguous.
at::Tensor channel_stat(const char* op, const char* name, const at::Tensor& t, const Input& in) {
  TORCH_CHECK(t.numel() == in.cfg.C, op, ": expected ", name, " with ", in.cfg.C,
              " elements, got ", t.sizes());
  return t.reshape({in.cfg.C}).to(in.opmath).contiguous();
}

at::Tensor new_stat(const Input& in) { return at::empty({in.cfg.C}, in.x.options().dtype(in.opmath)); }

// Calls fn(typed pointer) with the arithmetic-type pointer of `t`.
template <typename Fn>
void with_opmath(const at::Tensor& t, const Fn& fn) {
  if (t.scalar_type() == at::kDouble) {
    fn(t.mutable_data_ptr<double>());
  } else {
    fn(t.mutable_data_ptr<float>());
  }
}

// Per-channel sums of the whole tensor, in double: [2, C] (sum1, sum2).
at::Tensor channel_sums(const Input& in, BatchNormSums sums, const at::Tensor& dy,
                        const at::Tensor& center) {
  const BatchNormConfig& cfg = in.cfg;
  at::Tensor out = at::zeros({2, cfg.C}, in.x.options().dtype(at::kDouble));
  if (in.x.numel() == 0) return out;
  double* s = out.mutable_data_ptr<double>();
  const BatchNormReduceFn kernel = batch_norm_reduce_kernel();
  BatchNormReduceArgs args{sums, in.x.const_data_ptr(), ptr_or_null(dy), center.const_data_ptr(),
                           s, s + cfg.C, nullptr};
  if (!cfg.channels_last) {
    at::parallel_for(0, cfg.C, 1, [&](int64_t begin, int64_t end) { kernel(cfg, args, begin, end); });
    return out;
  }
  const int64_t rows = in.count();
  const int64_t blocks = std::min(rows, kBlocks);
  // Per block: [sum1 | sum2] partials in double, then the kernel's scratch.
  at::Tensor partial = at::zeros({blocks, 2 * cfg.C}, out.options());
  at::Tensor scratch = at::empty({blocks, 2 * cfg.C}, in.x.options().dtype(in.opmath));
  double* pp = partial.mutable_data_ptr<double>();
  char* sp = static_cast<char*>(scratch.mutable_data_ptr());
  const int64_t scratch_bytes = 2 * cfg.C * scratch.element_size();
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      BatchNormReduceArgs block = args;
      block.sum1 = pp + blk * 2 * cfg.C;
      block.sum2 = block.sum1 + cfg.C;
      block.scratch = sp + blk * scratch_bytes;
      kernel(cfg, block, blk * rows / blocks, (blk + 1) * rows / blocks);
    }
  });
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (int64_t i = 0; i < 2 * cfg.C; ++i) s[i] += pp[blk * 2 * cfg.C + i];
  }
  return out;
}

bool stream_output(const Input& in) { return in.x.numel() * in.x.element_size() >= kStreamBytes; }

// The elementwise pass over the whole tensor. Channels last, the rows are cut
// into the same blocks, on the same threads, as channel_sums' reduction, and
// each thread walks its rows backwards: a pass right after that reduction
// starts on the rows it read last, which are still in cache.
void affine_all(const Input& in, BatchNormAffineArgs args) {
  const BatchNormConfig& cfg = in.cfg;
  if (in.x.numel() == 0) return;
  args.stream = stream_output(in);
  const BatchNormAffineFn kernel = batch_norm_affine_kernel();
  if (cfg.channels_last) {
    const int64_t rows = in.count();
    const int64_t blocks = std::min(rows, kBlocks);
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      for (int64_t blk = last - 1; blk >= first; --blk) {
        kernel(cfg, args, blk * rows / blocks, (blk + 1) * rows / blocks);
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, cfg.S));
  at::parallel_for(0, cfg.N * cfg.C, grain, [&](int64_t begin, int64_t end) { kernel(cfg, args, begin, end); });
}

// Channels first, fused: sums of channel c, then fn(c) for its coefficients,
// then the elementwise pass over the channel's planes while they are cached.
template <typename Coefficients>
void fused_channels_first(const Input& in, BatchNormReduceArgs reduce, BatchNormAffineArgs affine,
                          const Coefficients& coefficients) {
  const BatchNormConfig& cfg = in.cfg;
  affine.stream = stream_output(in);
  const BatchNormReduceFn reduce_kernel = batch_norm_reduce_kernel();
  const BatchNormAffineFn affine_kernel = batch_norm_affine_kernel();
  at::parallel_for(0, cfg.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      reduce_kernel(cfg, reduce, c, c + 1);
      coefficients(c);
      for (int64_t n = 0; n < cfg.N; ++n) affine_kernel(cfg, affine, n * cfg.C + c, n * cfg.C + c + 1);
    }
  });
}

// mean and M2 (sum of squared deviations) from shifted sums.
void moments_from_sums(double shift, double s1, double s2, int64_t count, double& mean, double& m2) {
  const double d = s1 / static_cast<double>(count);
  mean = shift + d;
  m2 = std::max(0.0, s2 - s1 * d);
}

double invstd_of(double m2, int64_t count, double eps) {
  return 1.0 / std::sqrt(m2 / static_cast<double>(count) + eps);
}

// ------------------------------------------------------------------ ops
std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cpu(const at::Tensor& input) {
  constexpr const char* kOp = "fastopt.batch_norm_stats";
  const Input in = prepare(kOp, input);
  at::Tensor mean = new_stat(in), m2 = new_stat(in);
  if (in.x.numel() == 0) return {mean.zero_(), m2.zero_()};
  const at::Tensor shift = channel_first_values(in.x, in.opmath);
  const at::Tensor sums = channel_sums(in, BatchNormSums::Moments, {}, shift).to(at::kDouble);
  const at::Tensor shift64 = shift.to(at::kDouble);
  const double* s = sums.const_data_ptr<double>();
  const double* k = shift64.const_data_ptr<double>();
  with_opmath(mean, [&](auto* mp) {
    auto* m2p = static_cast<decltype(mp)>(m2.mutable_data_ptr());
    for (int64_t c = 0; c < in.cfg.C; ++c) {
      double mu, v;
      moments_from_sums(k[c], s[c], s[in.cfg.C + c], in.count(), mu, v);
      mp[c] = mu;
      m2p[c] = v;
    }
  });
  return {mean, m2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_fwd_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps) {
  constexpr const char* kOp = "fastopt.batch_norm_fwd";
  const Input in = prepare(kOp, input);
  const BatchNormConfig& cfg = in.cfg;
  const at::Tensor gamma = channel_param(kOp, "weight", weight, cfg.C, in.opmath);
  const at::Tensor beta = channel_param(kOp, "bias", bias, cfg.C, in.opmath);
  at::Tensor y = at::empty_like(in.x);  // keeps x's (dense) strides
  at::Tensor mean = new_stat(in), invstd = new_stat(in), var = new_stat(in);
  if (in.x.numel() == 0) {
    // No values: nothing is normalized; the statistics are those of an empty
    // channel (mean 0, variance 0), and the caller leaves running stats alone.
    mean.zero_();
    var.zero_();
    invstd.fill_(1.0 / std::sqrt(eps));
    return {y, mean, invstd, var};
  }
  const at::Tensor shift = channel_first_values(in.x, in.opmath);
  at::Tensor sums = at::zeros({2, cfg.C}, in.x.options().dtype(at::kDouble));
  at::Tensor coef = at::empty({2, cfg.C}, in.x.options().dtype(in.opmath));  // p, r
  const int64_t n = in.count();
  with_opmath(coef, [&](auto* p) {
    using M = std::remove_pointer_t<decltype(p)>;
    M* r = p + cfg.C;
    M* mp = static_cast<M*>(mean.mutable_data_ptr());
    M* ip = static_cast<M*>(invstd.mutable_data_ptr());
    M* vp = static_cast<M*>(var.mutable_data_ptr());
    const M* k = shift.const_data_ptr<M>();
    const M* g = gamma.defined() ? gamma.const_data_ptr<M>() : nullptr;
    const M* b = beta.defined() ? beta.const_data_ptr<M>() : nullptr;
    double* s = sums.mutable_data_ptr<double>();
    // Coefficients of channel c from its sums: y = (x - mean) * p + r.
    auto coefficients = [&](int64_t c) {
      double mu, m2;
      moments_from_sums(k[c], s[c], s[cfg.C + c], n, mu, m2);
      const double is = invstd_of(m2, n, eps);
      mp[c] = static_cast<M>(mu);
      ip[c] = static_cast<M>(is);
      vp[c] = static_cast<M>(m2 / static_cast<double>(n));
      p[c] = static_cast<M>(is * (g != nullptr ? static_cast<double>(g[c]) : 1.0));
      r[c] = b != nullptr ? b[c] : M(0);
    };
    BatchNormReduceArgs reduce{BatchNormSums::Moments, in.x.const_data_ptr(), nullptr, k, s,
                               s + cfg.C, nullptr};
    // center = mean: written per channel by coefficients() before the channel's pass.
    BatchNormAffineArgs affine{in.x.const_data_ptr(), nullptr, y.mutable_data_ptr(), mp, p,
                               nullptr, r};
    if (!cfg.channels_last) {
      fused_channels_first(in, reduce, affine, coefficients);
      return;
    }
    sums.copy_(channel_sums(in, BatchNormSums::Moments, {}, shift));
    for (int64_t c = 0; c < cfg.C; ++c) coefficients(c);
    affine_all(in, affine);
  });
  return {y, mean, invstd, var};
}

at::Tensor batch_norm_apply_cpu(const at::Tensor& input, const at::Tensor& mean,
                                const at::Tensor& invstd, const c10::optional<at::Tensor>& weight,
                                const c10::optional<at::Tensor>& bias) {
  constexpr const char* kOp = "fastopt.batch_norm_apply";
  const Input in = prepare(kOp, input);
  const int64_t C = in.cfg.C;
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  at::Tensor p = channel_stat(kOp, "invstd", invstd, in);
  const at::Tensor gamma = channel_param(kOp, "weight", weight, C, in.opmath);
  at::Tensor r = channel_param(kOp, "bias", bias, C, in.opmath);
  if (gamma.defined()) p = p * gamma;
  if (!r.defined()) r = at::zeros({C}, p.options());
  at::Tensor y = at::empty_like(in.x);
  affine_all(in, BatchNormAffineArgs{in.x.const_data_ptr(), nullptr, y.mutable_data_ptr(),
                                     m.const_data_ptr(), p.const_data_ptr(), nullptr,
                                     r.const_data_ptr()});
  return y;
}

std::tuple<at::Tensor, at::Tensor> batch_norm_bwd_reduce_cpu(const at::Tensor& grad_out,
                                                             const at::Tensor& input,
                                                             const at::Tensor& mean) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd_reduce";
  const Input in = prepare(kOp, input);
  TORCH_CHECK(grad_out.sizes() == input.sizes(), kOp, ": grad_out has shape ", grad_out.sizes(),
              " but the input has shape ", input.sizes());
  const at::Tensor dy = like_layout(grad_out, in.x, in.cfg.channels_last);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor sums = channel_sums(in, BatchNormSums::Gradient, dy, m).to(in.opmath);
  // Two separate tensors: outputs must not alias one another.
  return {sums[0].clone(), sums[1].clone()};
}

// dx = (x - mean) * p + dy * q + r, with q = invstd * w, p = -q * invstd^2 * sum_dy_xmu / n
// and r = -q * sum_dy / n: the gradient through the batch statistics.
struct GradCoefficients {
  template <typename M>
  static void of(int64_t c, double sum_dy, double sum_dy_xmu, double invstd, double w,
                 int64_t count, M* p, M* q, M* r) {
    const double a = invstd * w, inv_n = 1.0 / static_cast<double>(count);
    p[c] = static_cast<M>(-a * invstd * invstd * sum_dy_xmu * inv_n);
    q[c] = static_cast<M>(a);
    r[c] = static_cast<M>(-a * sum_dy * inv_n);
  }
};

at::Tensor batch_norm_bwd_elemt_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                                    const at::Tensor& mean, const at::Tensor& invstd,
                                    const c10::optional<at::Tensor>& weight,
                                    const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu,
                                    int64_t count) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd_elemt";
  const Input in = prepare(kOp, input);
  const int64_t C = in.cfg.C;
  TORCH_CHECK(grad_out.sizes() == input.sizes(), kOp, ": grad_out has shape ", grad_out.sizes(),
              " but the input has shape ", input.sizes());
  TORCH_CHECK(count > 0 || input.numel() == 0, kOp, ": count must be positive, got ", count);
  const at::Tensor dy = like_layout(grad_out, in.x, in.cfg.channels_last);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor is = channel_stat(kOp, "invstd", invstd, in).to(at::kDouble);
  const at::Tensor gamma = channel_param(kOp, "weight", weight, C, at::kDouble);
  const at::Tensor a = channel_stat(kOp, "sum_dy", sum_dy, in).to(at::kDouble);
  const at::Tensor b = channel_stat(kOp, "sum_dy_xmu", sum_dy_xmu, in).to(at::kDouble);
  at::Tensor dx = at::empty_like(in.x);
  if (in.x.numel() == 0) return dx;
  at::Tensor coef = at::empty({3, C}, m.options());
  with_opmath(coef, [&](auto* p) {
    const double* g = gamma.defined() ? gamma.const_data_ptr<double>() : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      GradCoefficients::of(c, a.const_data_ptr<double>()[c], b.const_data_ptr<double>()[c],
                           is.const_data_ptr<double>()[c], g != nullptr ? g[c] : 1.0, count, p,
                           p + C, p + 2 * C);
    }
    affine_all(in, BatchNormAffineArgs{in.x.const_data_ptr(), dy.const_data_ptr(),
                                       dx.mutable_data_ptr(), m.const_data_ptr(), p, p + C,
                                       p + 2 * C});
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::optional<at::Tensor>& weight) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd";
  const Input in = prepare(kOp, input);
  const BatchNormConfig& cfg = in.cfg;
  const int64_t C = cfg.C;
  TORCH_CHECK(grad_out.sizes() == input.sizes(), kOp, ": grad_out has shape ", grad_out.sizes(),
              " but the input has shape ", input.sizes());
  const at::Tensor dy = like_layout(grad_out, in.x, cfg.channels_last);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor is = channel_stat(kOp, "invstd", invstd, in);
  const at::Tensor gamma = channel_param(kOp, "weight", weight, C, in.opmath);
  at::Tensor dx = at::empty_like(in.x);
  at::Tensor sums = at::zeros({2, C}, in.x.options().dtype(at::kDouble));
  if (in.x.numel() > 0) {
    at::Tensor coef = at::empty({3, C}, m.options());  // p, q, r
    const int64_t n = in.count();
    with_opmath(coef, [&](auto* p) {
      using M = std::remove_pointer_t<decltype(p)>;
      const M* g = gamma.defined() ? gamma.const_data_ptr<M>() : nullptr;
      const M* ip = is.const_data_ptr<M>();
      double* s = sums.mutable_data_ptr<double>();
      auto coefficients = [&](int64_t c) {
        GradCoefficients::of(c, s[c], s[C + c], static_cast<double>(ip[c]),
                             g != nullptr ? static_cast<double>(g[c]) : 1.0, n, p, p + C,
                             p + 2 * C);
      };
      BatchNormReduceArgs reduce{BatchNormSums::Gradient, in.x.const_data_ptr(),
                                 dy.const_data_ptr(), m.const_data_ptr(), s, s + C, nullptr};
      BatchNormAffineArgs affine{in.x.const_data_ptr(), dy.const_data_ptr(),
                                 dx.mutable_data_ptr(), m.const_data_ptr(), p, p + C, p + 2 * C};
      if (!cfg.channels_last) {
        fused_channels_first(in, reduce, affine, coefficients);
        return;
      }
      sums.copy_(channel_sums(in, BatchNormSums::Gradient, dy, m));
      for (int64_t c = 0; c < C; ++c) coefficients(c);
      affine_all(in, affine);
    });
  }
  const c10::ScalarType param_dtype =
      weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();
  // grad_weight = sum dy * (x - mean) * invstd, grad_bias = sum dy.
  at::Tensor grad_weight = (sums[1] * is.to(at::kDouble)).to(param_dtype);
  at::Tensor grad_bias = sums[0].to(param_dtype);
  return {dx, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("batch_norm_stats", &batch_norm_stats_cpu);
  m.impl("batch_norm_fwd", &batch_norm_fwd_cpu);
  m.impl("batch_norm_apply", &batch_norm_apply_cpu);
  m.impl("batch_norm_bwd", &batch_norm_bwd_cpu);
  m.impl("batch_norm_bwd_reduce", &batch_norm_bwd_reduce_cpu);
  m.impl("batch_norm_bwd_elemt", &batch_norm_bwd_elemt_cpu);
}

}  // namespace fastopt::cpu
