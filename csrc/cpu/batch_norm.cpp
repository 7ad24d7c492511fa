// fastopt::batch_norm_* on the CPU: shape and layout checks, per-channel
// coefficients in double, and the per-ISA reduction and affine kernels
// (cpu/kernels/batch_norm_kernel.h) under at::parallel_for.
//
// Every op is at most two passes over x (and dy): a per-channel reduction,
// then an elementwise pass, each reading memory in order. Work is split so
// that both layouts keep every thread busy:
//   * channels first ([N, C, S]): the reduction by ranges of channels (each
//     sample's planes of a range are one contiguous run), the elementwise
//     pass by blocks of planes;
//   * channels last ([R, C] rows): by blocks of rows, each block summing
//     into its own partial row; the partials are added in block order, so the
//     result does not depend on the thread count.
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

#include "cpu/kernels/batch_norm_kernel.h"
#include "cpu/output_cache.h"
#include "cpu/parallel_blocks.h"
#include "cpu/stream_fence.h"
#include "common/math_ops.h"
#include "common/norm_layout.h"

namespace fastopt::cpu {
namespace {

using namespace ::fastopt::norm;

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

// Calls fn(M{}) with a value of x's arithmetic type M (float or double).
template <typename Fn>
void with_opmath(const Input& in, const Fn& fn) {
  if (in.opmath == at::kDouble) {
    fn(double{});
  } else {
    fn(float{});
  }
}

template <typename M>
M* data_of(const at::Tensor& t) {
  return t.defined() ? static_cast<M*>(t.mutable_data_ptr()) : nullptr;
}

// Per-channel sums of the whole tensor, in double, into sum[0, 2C): sum1 then sum2.
void channel_sums(const Input& in, BatchNormSums sums, const void* dy, const void* center,
                  double* sum) {
  const BatchNormConfig& cfg = in.cfg;
  std::fill(sum, sum + 2 * cfg.C, 0.0);
  if (in.x.numel() == 0) return;
  const BatchNormReduceFn kernel = batch_norm_reduce_kernel();
  const BatchNormReduceArgs args{sums, in.x.const_data_ptr(), dy, center, sum, sum + cfg.C, nullptr};
  if (!cfg.channels_last) {
    at::parallel_for(0, cfg.C, unit_grain(in.count()),
                     [&](int64_t begin, int64_t end) { kernel(cfg, args, begin, end); });
    return;
  }
  const int64_t rows = in.count();
  const int64_t blocks = work_blocks(rows, in.x.numel());
  // Per block: [sum1 | sum2] partials in double, and the kernel's scratch
  // (2C arithmetic-type values, at most doubles). Uninitialised here: each
  // block zeroes its own partials inside the parallel region (at C = 256
  // they are 256 KB, which a serial zeroing would spend tens of us on).
  const std::unique_ptr<double[]> partial(new double[blocks * 2 * cfg.C]);
  const std::unique_ptr<double[]> scratch(new double[blocks * 2 * cfg.C]);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      BatchNormReduceArgs block = args;
      block.sum1 = partial.get() + blk * 2 * cfg.C;
      std::fill(block.sum1, block.sum1 + 2 * cfg.C, 0.0);
      block.sum2 = block.sum1 + cfg.C;
      block.scratch = scratch.get() + blk * 2 * cfg.C;
      kernel(cfg, block, blk * rows / blocks, (blk + 1) * rows / blocks);
    }
  });
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (int64_t i = 0; i < 2 * cfg.C; ++i) sum[i] += partial[blk * 2 * cfg.C + i];
  }
}

// The elementwise pass over the whole tensor, rows (channels last) or
// (n, c) planes (channels first) cut into blocks. Each thread walks its
// blocks last to first: right after a reduction, which read the tensor in
// order, the pass starts on what the reduction read last and the shared
// cache may still hold.
void affine_all(const Input& in, BatchNormAffineArgs args) {
  const BatchNormConfig& cfg = in.cfg;
  if (in.x.numel() == 0) return;
  args.stream = stream_output(in.x);
  const BatchNormAffineFn kernel = batch_norm_affine_kernel();
  const int64_t items = cfg.channels_last ? in.count() : cfg.N * cfg.C;
  const int64_t item_size = cfg.channels_last ? cfg.C : cfg.S;
  const int64_t blocks = work_blocks(items, items * item_size);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t blk = last - 1; blk >= first; --blk) {
      kernel(cfg, args, blk * items / blocks, (blk + 1) * items / blocks);
    }
    if (args.stream) stream_fence();
  });
}

// Channels per block when a channels-first training pass should finish a
// block of channels (all N samples of them: their statistics are complete)
// before the next, so that its elementwise pass rereads the block from the
// cache instead of memory; 0 for the two whole-tensor passes. A block is
// 1/16 of the last-level cache (2 MB of the development VM's 32 MB: two
// threads' blocks stay well inside it), and is worth it when
//   * the pass reads more than that cache holds: smaller tensors are still
//     cached for the second whole-tensor pass, which reads them in reverse
//     (affine_all), and blocked they were 15-25% slower;
//   * a block is at most 64 runs, one per sample, of at least 12 KB each
//     (its planes of a sample are contiguous; the runs lie C * S apart): the
//     prefetchers follow few long runs well, but many short ones poorly. With
//     runs of 4-8 KB, at (256, 256, 14, 14), the forward took 6.9 ms against
//     4.7; with 128 runs of 16 KB, at (128, 512, 14, 14) and
//     (128, 128, 28, 28), it was 5-11% slower, where 64 runs of 12.5 KB, at
//     (64, 64, 56, 56), made the backward 21% faster;
//   * there are blocks enough to keep every thread busy to the end (4 per
//     thread: the whole-tensor passes split planes evenly, whatever C is).
// Measured on the development VM (A/B in one process, caches scrubbed before
// each call, 2 threads, 2 MB blocks): backward at (32, 64, 56, 56)
// 3.15 -> 2.77 ms; at (64, 64, 56, 56), (16, 256, 56, 56), (64, 256, 28, 28)
// and (32, 128, 56, 56) 20-23% faster, and their forwards 5-10%.
int64_t channels_per_block(const Input& in, bool with_dy) {
  const BatchNormConfig& cfg = in.cfg;
  if (cfg.channels_last || in.x.numel() == 0) return 0;
  const int64_t streams = with_dy ? 2 : 1;
  const int64_t plane = cfg.S * in.x.element_size();
  const int64_t cache = last_level_cache_bytes();
  if (in.x.numel() * in.x.element_size() * streams <= cache) return 0;
  constexpr int64_t kMaxRuns = 64, kMinRun = 12 << 10;
  const int64_t per_block = std::max<int64_t>(1, cache / 16 / (cfg.N * plane * streams));
  const int64_t blocks = (cfg.C + per_block - 1) / per_block;
  const bool worth_it =
      cfg.N <= kMaxRuns && per_block * plane >= kMinRun && blocks >= 4 * at::get_num_threads();
  return worth_it ? per_block : 0;
}

// The training ops' two passes with per-channel coefficients between them:
// sums, coefficients, then the elementwise pass, over the whole tensor or
// block by block (channels_per_block). Either way each channel's sums are
// the same, taken in sample order, so the two give identical results.
template <typename Coefficients>
void reduce_then_affine(const Input& in, const BatchNormReduceArgs& reduce,
                        const BatchNormAffineArgs& affine, const Coefficients& coefficients) {
  const BatchNormConfig& cfg = in.cfg;
  const int64_t per_block = channels_per_block(in, reduce.dy != nullptr);
  if (per_block == 0) {
    channel_sums(in, reduce.sums, reduce.dy, reduce.center, reduce.sum1);
    for (int64_t c = 0; c < cfg.C; ++c) coefficients(c);
    affine_all(in, affine);
    return;
  }
  BatchNormAffineArgs args = affine;
  args.stream = stream_output(in.x);
  const BatchNormReduceFn reduce_kernel = batch_norm_reduce_kernel();
  const BatchNormAffineFn affine_kernel = batch_norm_affine_kernel();
  const int64_t blocks = (cfg.C + per_block - 1) / per_block;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t c0 = blk * per_block, c1 = std::min(cfg.C, c0 + per_block);
      reduce_kernel(cfg, reduce, c0, c1);
      for (int64_t c = c0; c < c1; ++c) coefficients(c);
      // Samples last to first: the last read are the likeliest still cached.
      for (int64_t n = cfg.N - 1; n >= 0; --n) affine_kernel(cfg, args, n * cfg.C + c0, n * cfg.C + c1);
    }
    if (args.stream) stream_fence();
  });
}

// The shift of every channel's moment sums (N * S > 0), NOTE: [moment shift]
// in common/moment_shift.h: the mean, in double, of the channel's first
// values (0 if that is not finite).
template <typename M>
void channel_shifts(const Input& in, M* shift) {
  const BatchNormConfig& cfg = in.cfg;
  const int64_t C = cfg.C, S = cfg.S;
  const auto [n0, s0] = shift_extent(cfg.N, S);
  std::vector<double> sum(C, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "channel_shifts", [&] {
    const scalar_t* x = in.x.const_data_ptr<scalar_t>();
    for (int64_t n = 0; n < n0; ++n) {  // in memory order
      if (cfg.channels_last) {  // rows of C values
        for (int64_t pos = 0; pos < s0; ++pos) {
          for (int64_t c = 0; c < C; ++c) sum[c] += static_cast<double>(x[(n * S + pos) * C + c]);
        }
      } else {  // planes of S values
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t pos = 0; pos < s0; ++pos) sum[c] += static_cast<double>(x[(n * C + c) * S + pos]);
        }
      }
    }
  });
  const double count = static_cast<double>(n0 * s0);
  for (int64_t c = 0; c < C; ++c) shift[c] = static_cast<M>(finite_shift(sum[c] / count));
}

// mean and M2 (sum of squared deviations) from shifted sums.
void moments_from_sums(double shift, double s1, double s2, int64_t count, double& mean, double& m2) {
  const double d = s1 / static_cast<double>(count);
  mean = shift + d;
  // Rounding can take a constant channel's m2 a little below zero; a NaN
  // (a NaN or inf in the batch) must stay NaN, so that the running variance
  // shows the divergence as torch's does.
  m2 = MathOps<double>::max(s2 - s1 * d, 0.0);
}

double invstd_of(double m2, int64_t count, double eps) {
  return 1.0 / std::sqrt(m2 / static_cast<double>(count) + eps);
}

// ------------------------------------------------------------------ ops
std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cpu(const at::Tensor& input) {
  constexpr const char* kOp = "fastopt.batch_norm_stats";
  const Input in = prepare(kOp, input);
  const int64_t C = in.cfg.C, n = in.count();
  at::Tensor mean = new_stat(in), m2 = new_stat(in);
  if (in.x.numel() == 0) return {mean.zero_(), m2.zero_()};
  with_opmath(in, [&](auto zero) {
    using M = decltype(zero);
    std::vector<M> shift(C);
    std::vector<double> sums(2 * C);
    channel_shifts(in, shift.data());
    channel_sums(in, BatchNormSums::Moments, nullptr, shift.data(), sums.data());
    M* mp = data_of<M>(mean);
    M* m2p = data_of<M>(m2);
    for (int64_t c = 0; c < C; ++c) {
      double mu, v;
      moments_from_sums(shift[c], sums[c], sums[C + c], n, mu, v);
      mp[c] = static_cast<M>(mu);
      m2p[c] = static_cast<M>(v);
    }
  });
  return {mean, m2};
}

// The running estimates (for_each_running_stat), in double and rounded once,
// for batch_norm_update_stats_ and the update in batch_norm_fwd.
void update_running_stats(const char* op, const c10::optional<at::Tensor>& running_mean,
                          const c10::optional<at::Tensor>& running_var, const at::Tensor& mean,
                          const at::Tensor& var, double momentum, int64_t count) {
  for_each_running_stat(op, running_mean, running_var, mean, var, count,
                        [&](const at::Tensor& running, const at::Tensor& stat, double scale) {
    const at::Tensor s = stat.to(at::kDouble).contiguous();
    const double* sp = s.const_data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running.scalar_type(), "fastopt.update_running_stats", [&] {
      scalar_t* rp = running.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < running.numel(); ++c) {
        rp[c] = static_cast<scalar_t>((1.0 - momentum) * static_cast<double>(rp[c]) +
                                      momentum * scale * sp[c]);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_fwd_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    double momentum) {
  constexpr const char* kOp = "fastopt.batch_norm_fwd";
  const Input in = prepare(kOp, input);
  const int64_t C = in.cfg.C, n = in.count();
  const at::Tensor gamma = channel_param(kOp, "weight", weight, C, in.opmath);
  const at::Tensor beta = channel_param(kOp, "bias", bias, C, in.opmath);
  at::Tensor y = empty_output_like(in.x);  // keeps x's (dense) strides
  at::Tensor mean = new_stat(in), invstd = new_stat(in), var = new_stat(in);
  if (in.x.numel() == 0) {
    // No values: nothing is normalized; the statistics are those of an empty
    // channel (mean 0, variance 0), and the caller leaves running stats alone.
    mean.zero_();
    var.zero_();
    invstd.fill_(1.0 / std::sqrt(eps));
    return {y, mean, invstd, var};
  }
  with_opmath(in, [&](auto zero) {
    using M = decltype(zero);
    std::vector<M> shift(C), p(C), r(C);
    std::vector<double> sums(2 * C);
    channel_shifts(in, shift.data());
    M* mp = data_of<M>(mean);
    M* ip = data_of<M>(invstd);
    M* vp = data_of<M>(var);
    const M* g = data_of<M>(gamma);
    const M* b = data_of<M>(beta);
    // Channel c's statistics and y = (x - mean) * p + r from its sums.
    auto coefficients = [&](int64_t c) {
      double mu, m2;
      moments_from_sums(shift[c], sums[c], sums[C + c], n, mu, m2);
      const double is = invstd_of(m2, n, eps);
      mp[c] = static_cast<M>(mu);
      ip[c] = static_cast<M>(is);
      vp[c] = static_cast<M>(m2 / static_cast<double>(n));
      p[c] = static_cast<M>(is * (g != nullptr ? static_cast<double>(g[c]) : 1.0));
      r[c] = b != nullptr ? b[c] : M(0);
    };
    const BatchNormReduceArgs reduce{BatchNormSums::Moments, in.x.const_data_ptr(), nullptr,
                                     shift.data(), sums.data(), sums.data() + C, nullptr};
    // center = the mean, written by coefficients(c) before channel c's pass.
    const BatchNormAffineArgs affine{in.x.const_data_ptr(), nullptr, y.mutable_data_ptr(), mp,
                                     p.data(), nullptr, r.data()};
    reduce_then_affine(in, reduce, affine, coefficients);
  });
  update_running_stats(kOp, running_mean, running_var, mean, var, momentum, n);
  return {y, mean, invstd, var};
}

at::Tensor batch_norm_apply_cpu(const at::Tensor& input, const at::Tensor& mean,
                                const at::Tensor& invstd, const c10::optional<at::Tensor>& weight,
                                const c10::optional<at::Tensor>& bias) {
  constexpr const char* kOp = "fastopt.batch_norm_apply";
  const Input in = prepare(kOp, input);
  const int64_t C = in.cfg.C;
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor is = channel_stat(kOp, "invstd", invstd, in);
  const at::Tensor gamma = channel_param(kOp, "weight", weight, C, in.opmath);
  const at::Tensor beta = channel_param(kOp, "bias", bias, C, in.opmath);
  at::Tensor y = empty_output_like(in.x);
  with_opmath(in, [&](auto zero) {
    using M = decltype(zero);
    std::vector<M> p(C), r(C);
    const M* g = data_of<M>(gamma);
    const M* b = data_of<M>(beta);
    const M* ip = data_of<M>(is);
    for (int64_t c = 0; c < C; ++c) {
      p[c] = g != nullptr ? ip[c] * g[c] : ip[c];
      r[c] = b != nullptr ? b[c] : M(0);
    }
    affine_all(in, BatchNormAffineArgs{in.x.const_data_ptr(), nullptr, y.mutable_data_ptr(),
                                       m.const_data_ptr(), p.data(), nullptr, r.data()});
  });
  return y;
}

void check_grad_out(const char* op, const at::Tensor& grad_out, const at::Tensor& input) {
  TORCH_CHECK(grad_out.sizes() == input.sizes(), op, ": grad_out has shape ", grad_out.sizes(),
              " but the input has shape ", input.sizes());
}

std::tuple<at::Tensor, at::Tensor> batch_norm_bwd_reduce_cpu(const at::Tensor& grad_out,
                                                             const at::Tensor& input,
                                                             const at::Tensor& mean) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd_reduce";
  const Input in = prepare(kOp, input);
  check_grad_out(kOp, grad_out, input);
  const int64_t C = in.cfg.C;
  const at::Tensor dy = like_layout(grad_out, in.x);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  at::Tensor sum_dy = new_stat(in), sum_dy_xmu = new_stat(in);
  with_opmath(in, [&](auto zero) {
    using M = decltype(zero);
    std::vector<double> sums(2 * C);
    channel_sums(in, BatchNormSums::Gradient, dy.const_data_ptr(), m.const_data_ptr(), sums.data());
    std::copy(sums.begin(), sums.begin() + C, data_of<M>(sum_dy));
    std::copy(sums.begin() + C, sums.end(), data_of<M>(sum_dy_xmu));
  });
  return {sum_dy, sum_dy_xmu};
}

// dx = (x - mean) * p + dy * q + r, with q = invstd * w, p = -q * invstd^2 * sum_dy_xmu / n
// and r = -q * sum_dy / n: the gradient through the batch statistics.
template <typename M>
void grad_coefficients(double sum_dy, double sum_dy_xmu, double invstd, double w, int64_t count,
                       M& p, M& q, M& r) {
  const double a = invstd * w, inv_n = 1.0 / static_cast<double>(count);
  p = static_cast<M>(-a * invstd * invstd * sum_dy_xmu * inv_n);
  q = static_cast<M>(a);
  r = static_cast<M>(-a * sum_dy * inv_n);
}

at::Tensor batch_norm_bwd_elemt_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                                    const at::Tensor& mean, const at::Tensor& invstd,
                                    const c10::optional<at::Tensor>& weight,
                                    const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu,
                                    int64_t count) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd_elemt";
  const Input in = prepare(kOp, input);
  check_grad_out(kOp, grad_out, input);
  TORCH_CHECK(count > 0 || input.numel() == 0, kOp, ": count must be positive, got ", count);
  const int64_t C = in.cfg.C;
  const at::Tensor dy = like_layout(grad_out, in.x);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor is = channel_stat(kOp, "invstd", invstd, in);
  const at::Tensor gamma = channel_param(kOp, "weight", weight, C, in.opmath);
  const at::Tensor a = channel_stat(kOp, "sum_dy", sum_dy, in);
  const at::Tensor b = channel_stat(kOp, "sum_dy_xmu", sum_dy_xmu, in);
  at::Tensor dx = empty_output_like(in.x);
  if (in.x.numel() == 0) return dx;
  with_opmath(in, [&](auto zero) {
    using M = decltype(zero);
    std::vector<M> p(C), q(C), r(C);
    const M* g = data_of<M>(gamma);
    for (int64_t c = 0; c < C; ++c) {
      grad_coefficients(data_of<M>(a)[c], data_of<M>(b)[c], data_of<M>(is)[c],
                        g != nullptr ? static_cast<double>(g[c]) : 1.0, count, p[c], q[c], r[c]);
    }
    affine_all(in, BatchNormAffineArgs{in.x.const_data_ptr(), dy.const_data_ptr(),
                                       dx.mutable_data_ptr(), m.const_data_ptr(), p.data(),
                                       q.data(), r.data()});
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& invstd, const c10::optional<at::Tensor>& weight) {
  constexpr const char* kOp = "fastopt.batch_norm_bwd";
  const Input in = prepare(kOp, input);
  check_grad_out(kOp, grad_out, input);
  const int64_t C = in.cfg.C, n = in.count();
  const at::Tensor dy = like_layout(grad_out, in.x);
  const at::Tensor m = channel_stat(kOp, "mean", mean, in);
  const at::Tensor is = channel_stat(kOp, "invstd", invstd, in);
  const at::Tensor gamma = channel_param(kOp, "weight", weight, C, in.opmath);
  at::Tensor dx = empty_output_like(in.x);
  // grad_weight = sum dy * (x - mean) * invstd, grad_bias = sum dy; in the
  // arithmetic type here, the weight's dtype on return.
  at::Tensor grad_weight = new_stat(in).zero_(), grad_bias = new_stat(in).zero_();
  if (in.x.numel() > 0) {
    with_opmath(in, [&](auto zero) {
      using M = decltype(zero);
      std::vector<M> p(C), q(C), r(C);
      std::vector<double> sums(2 * C);
      const M* g = data_of<M>(gamma);
      const M* ip = data_of<M>(is);
      M* dw = data_of<M>(grad_weight);
      M* db = data_of<M>(grad_bias);
      auto coefficients = [&](int64_t c) {
        grad_coefficients(sums[c], sums[C + c], static_cast<double>(ip[c]),
                          g != nullptr ? static_cast<double>(g[c]) : 1.0, n, p[c], q[c], r[c]);
        dw[c] = static_cast<M>(sums[C + c] * static_cast<double>(ip[c]));
        db[c] = static_cast<M>(sums[c]);
      };
      const BatchNormReduceArgs reduce{BatchNormSums::Gradient, in.x.const_data_ptr(),
                                       dy.const_data_ptr(), m.const_data_ptr(), sums.data(),
                                       sums.data() + C, nullptr};
      const BatchNormAffineArgs affine{in.x.const_data_ptr(), dy.const_data_ptr(),
                                       dx.mutable_data_ptr(), m.const_data_ptr(), p.data(),
                                       q.data(), r.data()};
      reduce_then_affine(in, reduce, affine, coefficients);
    });
  }
  const c10::ScalarType param_dtype = param_grad_dtype(weight, input);
  return {dx, grad_weight.to(param_dtype), grad_bias.to(param_dtype)};
}

// running = (1 - momentum) * running + momentum * statistic, in double and
// rounded once into the buffer's dtype; the variance enters unbiased,
// var * count / (count - 1), as in torch.
void batch_norm_update_stats_cpu(const c10::optional<at::Tensor>& running_mean,
                                 const c10::optional<at::Tensor>& running_var,
                                 const at::Tensor& mean, const at::Tensor& var, double momentum,
                                 int64_t count) {
  update_running_stats("fastopt.batch_norm_update_stats_", running_mean, running_var, mean, var,
                       momentum, count);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("batch_norm_stats", &batch_norm_stats_cpu);
  m.impl("batch_norm_fwd", &batch_norm_fwd_cpu);
  m.impl("batch_norm_apply", &batch_norm_apply_cpu);
  m.impl("batch_norm_bwd", &batch_norm_bwd_cpu);
  m.impl("batch_norm_bwd_reduce", &batch_norm_bwd_reduce_cpu);
  m.impl("batch_norm_bwd_elemt", &batch_norm_bwd_elemt_cpu);
  m.impl("batch_norm_update_stats_", &batch_norm_update_stats_cpu);
}

}  // namespace fastopt::cpu
