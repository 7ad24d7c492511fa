// Argument checks of fastopt::group_norm_fwd/bwd shared by the CPU and CUDA
// layers, so that both raise the same errors and see x the same way.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>

#include "common/norm_activation.h"
#include "common/norm_layout.h"

namespace fastopt::norm {

// x as the kernels see it: N samples of C channels times S positions, in G groups.
struct GroupNormDims {
  int64_t N, C, S, G;
  bool channels_last;
};

//
// With normalized_ndim = k > 0 (LayerNorm) x is (*, K1, ..., Kk) instead: each
// of its prod(*) rows is a sample of C = K1 * ... * Kk values in one group, at
// S = 1. The op reads that shape itself, so that LayerNorm needs no
// reshape of x and view of y around it, which as autograd views cost a
// LayerNorm forward+backward about a sixth of its host time on a small input.
inline GroupNormDims group_norm_dims(const char* op, const at::Tensor& x, int64_t groups,
                                     int64_t normalized_ndim) {
  TORCH_CHECK(normalized_ndim >= 0 && normalized_ndim <= x.dim(), op, ": normalized_ndim must be in [0, ",
              x.dim(), "] for an input of shape ", x.sizes(), ", got ", normalized_ndim);
  if (normalized_ndim > 0) {
    TORCH_CHECK(groups == 1, op, ": a layer norm (normalized_ndim > 0) has one group, got num_groups=",
                groups);
    GroupNormDims dims{1, 1, 1, 1, false};
    const int64_t lead = x.dim() - normalized_ndim;
    for (int64_t d = 0; d < x.dim(); ++d) (d < lead ? dims.N : dims.C) *= x.size(d);
    return dims;
  }
  TORCH_CHECK(x.dim() >= 2, op, ": expected an input of shape (N, C, *), got ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK(groups > 0 && C % groups == 0, op,
              ": expected number of channels in input to be divisible by num_groups, but got "
              "input of shape ", x.sizes(), " and num_groups=", groups);
  GroupNormDims dims{x.size(0), C, 1, groups, false};
  for (int64_t d = 2; d < x.dim(); ++d) dims.S *= x.size(d);
  return dims;
}

// The tensor the kernels read: a layer norm's rows are C contiguous values
// (a copy for any other strides); otherwise x in a native layout
// (native_layout), which sets dims.channels_last.
inline at::Tensor group_norm_input(const at::Tensor& x, int64_t normalized_ndim, GroupNormDims& dims) {
  if (normalized_ndim > 0) {
    dims.channels_last = false;
    return x.contiguous();
  }
  return native_layout(x, dims.channels_last);
}

// At S = 1 (LayerNorm rows, GroupNorm on 1x1 maps) both layouts are the same
// memory, and the channels-last kernels, which run along the C channels of a
// row, are the fast ones.
inline void prefer_rows(GroupNormDims& dims) {
  if (dims.S == 1) dims.channels_last = true;
}

// group_norm_bwd's gradient and saved statistics against x's shape.
inline void check_backward_args(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                const at::Tensor& mean, const at::Tensor& rstd,
                                const GroupNormDims& dims) {
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out has shape ", grad_out.sizes(),
              " but the input has shape ", x.sizes());
  TORCH_CHECK(mean.numel() == dims.N * dims.G && rstd.numel() == dims.N * dims.G, op,
              ": expected mean and rstd with N * num_groups = ", dims.N * dims.G, " elements");
}

inline NormActivation norm_activation(const char* op, int64_t activation) {
  TORCH_CHECK(activation >= 0 && activation <= 2, op,
              ": activation must be 0 (none), 1 (relu) or 2 (silu), got ", activation);
  return static_cast<NormActivation>(activation);
}

}  // namespace fastopt::norm
