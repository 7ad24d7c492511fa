// fastopt::group_norm_fwd / group_norm_bwd on the CPU: shape and layout
// checks, per-channel parameters widened to the arithmetic type, then the
// per-ISA kernel once per sample under at::parallel_for.
//
// Samples are cut into fixed blocks (cpu/parallel_blocks.h). Each block owns
// its scratch and its partial dgamma/dbeta row, and the rows are summed at
// the end, so the weight gradients do not depend on the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>

#include "cpu/kernels/group_norm_kernel.h"
#include "common/group_norm_shape.h"
#include "common/norm_layout.h"
#include "cpu/output_cache.h"
#include "cpu/parallel_blocks.h"
#include "cpu/stream_fence.h"

namespace fastopt::cpu {
namespace {

using namespace ::fastopt::norm;

// Calls fn(block, n) for every sample n, blocks spread over the threads;
// a thread that streamed its output fences after its last sample.
template <typename Fn>
void for_each_sample(int64_t N, int64_t blocks, bool stream, const Fn& fn) {
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      for (int64_t n = blk * N / blocks; n < (blk + 1) * N / blocks; ++n) fn(blk, n);
    }
    if (stream) stream_fence();
  });
}

// dgamma[c] and dbeta[c]: the sums over the first `blocks` rows of work's
// [dgamma | dbeta] partials. A plain loop (parallel only over many channels):
// at::sum over the strided columns costs a fork-join of the thread pool,
// which on a busy 2-core machine took milliseconds for a few kilobytes.
template <typename M>
void sum_block_partials(const at::Tensor& work, int64_t blocks, int64_t C, at::Tensor& dgamma,
                        at::Tensor& dbeta) {
  const M* w = work.const_data_ptr<M>();
  const int64_t row = work.size(1);
  M* out[2] = {dgamma.mutable_data_ptr<M>(), dbeta.mutable_data_ptr<M>()};
  at::parallel_for(0, C, 1 << 15, [&](int64_t begin, int64_t end) {
    for (int k = 0; k < 2; ++k) {
      M* o = out[k];
      std::fill(o + begin, o + end, M(0));
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const M* part = w + blk * row + k * C;
        for (int64_t c = begin; c < end; ++c) o[c] += part[c];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, int64_t groups, double eps, int64_t activation,
    int64_t normalized_ndim) {
  constexpr const char* kOp = "fastopt.group_norm_fwd";
  GroupNormDims shape = group_norm_dims(kOp, input, groups, normalized_ndim);
  check_dtype(kOp, input.scalar_type());
  const at::Tensor x = group_norm_input(input, normalized_ndim, shape);
  prefer_rows(shape);
  const c10::ScalarType opmath = at::toOpMathType(x.scalar_type());
  const at::Tensor gamma = channel_param(kOp, "weight", weight, shape.C, opmath);
  const at::Tensor beta = channel_param(kOp, "bias", bias, shape.C, opmath);
  const GroupNormConfig cfg{x.scalar_type(), shape.C, shape.S, shape.G, shape.channels_last,
                            norm_activation(kOp, activation), eps, stream_output(x)};

  at::Tensor y = empty_output_like(x);  // keeps x's (dense) strides
  at::Tensor mean = at::empty({shape.N, shape.G}, x.options().dtype(opmath));
  at::Tensor rstd = at::empty({shape.N, shape.G}, x.options().dtype(opmath));
  if (x.numel() == 0) return {y, mean.zero_(), rstd.zero_()};

  const int64_t blocks = work_blocks(shape.N, x.numel());
  const int64_t scratch_vectors = group_norm_scratch_vectors(shape.channels_last, shape.S, shape.G);
  at::Tensor scratch = at::empty({blocks, scratch_vectors * shape.C}, mean.options());
  const int64_t sample = shape.C * shape.S, item = x.element_size();
  const GroupNormKernelFn kernel = group_norm_fwd_kernel();
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  char* yp = static_cast<char*>(y.mutable_data_ptr());
  char* mp = static_cast<char*>(mean.mutable_data_ptr());
  char* rp = static_cast<char*>(rstd.mutable_data_ptr());
  char* sp = static_cast<char*>(scratch.mutable_data_ptr());
  const int64_t stat_bytes = shape.G * mean.element_size();
  const int64_t scratch_bytes = scratch.size(1) * scratch.element_size();
  for_each_sample(shape.N, blocks, cfg.stream, [&](int64_t blk, int64_t n) {
    kernel(cfg, GroupNormSample{xp + n * sample * item, nullptr, yp + n * sample * item,
                                ptr_or_null(gamma), ptr_or_null(beta), mp + n * stat_bytes,
                                rp + n * stat_bytes, nullptr, nullptr, sp + blk * scratch_bytes});
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, int64_t groups, int64_t activation,
    int64_t normalized_ndim) {
  constexpr const char* kOp = "fastopt.group_norm_bwd";
  GroupNormDims shape = group_norm_dims(kOp, input, groups, normalized_ndim);
  check_dtype(kOp, input.scalar_type());
  check_backward_args(kOp, grad_out, input, mean, rstd, shape);
  const at::Tensor x = group_norm_input(input, normalized_ndim, shape);
  prefer_rows(shape);
  // dy in x's layout: a copy only when autograd hands over another layout.
  const at::Tensor dy = like_layout(grad_out, x);
  const c10::ScalarType opmath = at::toOpMathType(x.scalar_type());
  const at::Tensor mean_c = mean.to(opmath).contiguous();
  const at::Tensor rstd_c = rstd.to(opmath).contiguous();
  const at::Tensor gamma = channel_param(kOp, "weight", weight, shape.C, opmath);
  const at::Tensor beta = channel_param(kOp, "bias", bias, shape.C, opmath);
  const GroupNormConfig cfg{x.scalar_type(), shape.C, shape.S, shape.G, shape.channels_last,
                            norm_activation(kOp, activation), 0.0, stream_output(x)};

  at::Tensor dx = empty_output_like(x);
  const int64_t blocks = work_blocks(shape.N, x.numel());
  // Per block: [dgamma | dbeta] partial sums, then the kernel's scratch. Each
  // block zeroes its own partials on its first sample, inside the parallel
  // region: a separate at::zeros would be one more fork-join per call.
  const int64_t scratch_vectors = group_norm_scratch_vectors(shape.channels_last, shape.S, shape.G);
  at::Tensor work = at::empty({blocks, (2 + scratch_vectors) * shape.C}, x.options().dtype(opmath));
  if (x.numel() > 0) {
    const int64_t sample = shape.C * shape.S, item = x.element_size();
    const GroupNormKernelFn kernel = group_norm_bwd_kernel();
    const char* xp = static_cast<const char*>(x.const_data_ptr());
    const char* dyp = static_cast<const char*>(dy.const_data_ptr());
    char* dxp = static_cast<char*>(dx.mutable_data_ptr());
    const char* mp = static_cast<const char*>(mean_c.const_data_ptr());
    const char* rp = static_cast<const char*>(rstd_c.const_data_ptr());
    char* wp = static_cast<char*>(work.mutable_data_ptr());
    const int64_t op_size = work.element_size();
    const int64_t stat_bytes = shape.G * op_size, row_bytes = work.size(1) * op_size;
    for_each_sample(shape.N, blocks, cfg.stream, [&](int64_t blk, int64_t n) {
      char* row = wp + blk * row_bytes;
      if (n == blk * shape.N / blocks) std::memset(row, 0, 2 * shape.C * op_size);
      kernel(cfg, GroupNormSample{xp + n * sample * item, dyp + n * sample * item,
                                  dxp + n * sample * item, ptr_or_null(gamma), ptr_or_null(beta),
                                  // the backward only reads the statistics
                                  const_cast<char*>(mp + n * stat_bytes),
                                  const_cast<char*>(rp + n * stat_bytes), row,
                                  row + shape.C * op_size, row + 2 * shape.C * op_size});
    });
  }
  const c10::ScalarType param_dtype = param_grad_dtype(weight, input);
  // Two separate tensors: outputs must not alias one another.
  at::Tensor dgamma = at::empty({shape.C}, work.options());
  at::Tensor dbeta = at::empty({shape.C}, work.options());
  AT_DISPATCH_FLOATING_TYPES(opmath, "fastopt.group_norm_bwd", [&] {
    sum_block_partials<scalar_t>(work, x.numel() > 0 ? blocks : 0, shape.C, dgamma, dbeta);
  });
  return {dx, dgamma.to(param_dtype), dbeta.to(param_dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  m.impl("group_norm_fwd", &group_norm_fwd_cpu);
  m.impl("group_norm_bwd", &group_norm_bwd_cpu);
}

}  // namespace fastopt::cpu
