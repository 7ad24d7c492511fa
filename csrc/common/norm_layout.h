// Tensor-side helpers shared by the normalization ops on every device
// (cpu/group_norm.cpp, cpu/batch_norm.cpp, cuda/batch_norm_cuda.cpp): which
// memory layouts the kernels read natively, dtype checks, and per-channel
// parameters widened to the arithmetic type.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>

#include "common/moment_shift.h"

namespace fastopt::norm {

// Dense channels-last: the channel stride is 1 and each position holds C
// consecutive channels, for any number of spatial dims (NLC, NHWC, NDHWC).
inline bool is_channels_last(const at::Tensor& x) {
  const int64_t C = x.size(1);
  if (x.dim() < 3 || x.stride(1) != 1) return false;
  int64_t expected = C;
  for (int64_t d = x.dim() - 1; d >= 2; --d) {
    if (x.size(d) != 1 && x.stride(d) != expected) return false;
    expected *= x.size(d);
  }
  return x.size(0) == 1 || x.stride(0) == expected;
}

// The tensor the kernels read, in its own layout when that is a native one;
// any other strides are made contiguous.
inline at::Tensor native_layout(const at::Tensor& x, bool& channels_last) {
  if (x.is_contiguous()) {
    channels_last = false;
    return x;
  }
  channels_last = is_channels_last(x);
  return channels_last ? x : x.contiguous();
}

// `t` (a gradient handed over by autograd) in x's layout: a copy only when
// it has another one.
inline at::Tensor like_layout(const at::Tensor& t, const at::Tensor& x) {
  // Compared by strides, not by is_channels_last: at S = 1 (LayerNorm rows)
  // a 2-D x counts as channels last for the kernels, which is_channels_last,
  // needing a spatial dim, does not see, and every backward copied dy.
  at::Tensor out = t.to(x.scalar_type());
  if (out.strides() != x.strides()) out = at::empty_like(x).copy_(out);
  return out;
}

// NotImplementedError, as torch's normalization kernels raise for a dtype
// they have no kernel for.
inline void check_dtype(const char* op, c10::ScalarType dtype) {
  TORCH_CHECK_NOT_IMPLEMENTED(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                                  dtype == at::kHalf,
                              op, ": supports float32, float64, bfloat16 and float16, got ", dtype);
}

// Whether an optional tensor argument was passed (and is defined).
inline bool is_given(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// The dtype of grad_weight and grad_bias: the weight's, or x's without one.
inline c10::ScalarType param_grad_dtype(const c10::optional<at::Tensor>& weight, const at::Tensor& x) {
  return is_given(weight) ? weight->scalar_type() : x.scalar_type();
}

// A [C] weight or bias in the arithmetic type, or an undefined tensor.
inline at::Tensor channel_param(const char* op, const char* name,
                                const c10::optional<at::Tensor>& p, int64_t C,
                                c10::ScalarType opmath) {
  if (!is_given(p)) return {};
  TORCH_CHECK(p->numel() == C, op, ": expected ", name, " with ", C, " elements, got ",
              p->sizes());
  return p->reshape({C}).to(opmath).contiguous();
}

inline const void* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

inline void* mutable_ptr_or_null(const at::Tensor& t) { return t.defined() ? t.mutable_data_ptr() : nullptr; }

// The device-independent part of a BatchNorm running-estimate update after
// a batch of `count` values per channel: the checks, and for each estimate
// given, update(running, statistic, scale) for
//   running = (1 - momentum) * running + momentum * scale * statistic,
// where scale makes the biased batch variance unbiased. Nothing to do, and
// nothing checked, when neither estimate is given.
template <typename Update>
void for_each_running_stat(const char* op, const c10::optional<at::Tensor>& running_mean,
                           const c10::optional<at::Tensor>& running_var, const at::Tensor& mean,
                           const at::Tensor& var, int64_t count, const Update& update) {
  if (!is_given(running_mean) && !is_given(running_var)) return;
  TORCH_CHECK(count > 1, op, ": count must be at least 2, got ", count);
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  auto one = [&](const c10::optional<at::Tensor>& running, const at::Tensor& stat, double scale) {
    if (!is_given(running)) return;
    TORCH_CHECK(running->numel() == stat.numel(), op, ": expected running statistics with ",
                stat.numel(), " elements, got ", running->numel());
    if (running->is_contiguous()) {
      update(*running, stat, scale);
      return;
    }
    // A strided view (a column of a stacked buffer, say), which torch also
    // updates in place: through a contiguous copy, written back.
    const at::Tensor dense = running->contiguous();
    update(dense, stat, scale);
    running->copy_(dense);
  };
  one(running_mean, mean, 1.0);
  one(running_var, var, unbias);
}

}  // namespace fastopt::norm
