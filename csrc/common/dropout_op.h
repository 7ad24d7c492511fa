// Validation and launch parameters shared by the CPU and CUDA dropout ops, so
// that both reject bad input with the same exception types and messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace fastopt {

// The inputs of one dropout call, as the kernels see them: contiguous (so the
// logical, row-major index is the memory index, and layout never changes the
// mask), with undefined tensors for absent operands.
struct DropoutInputs {
  at::Tensor x;
  at::Tensor residual;
  at::Tensor bias;
  int64_t group;  // elements per mask index
};

// Checks a dropout op's arguments: x float32/float64/bfloat16/float16;
// 0 <= p <= 1; `seed` two int64 words on `seed_device`; group >= 1 dividing
// x.numel(); residual (when given) like x; bias (when given) 1-D of x.size(-1)
// elements, x's dtype and device. `device_type` is the backend's.
DropoutInputs check_dropout_args(const char* op, const at::Tensor& x, const at::Tensor& seed,
                                 double p, int64_t group, const at::Tensor* residual,
                                 const c10::optional<at::Tensor>& bias,
                                 c10::DeviceType device_type);

// The per-call mask parameters derived from p (see common/philox.h).
struct DropoutMaskParams {
  uint32_t threshold;
  bool drop_all;
  double keep_prob;  // divisor of kept elements; 1 when drop_all (nothing is kept)
};

DropoutMaskParams dropout_mask_params(double p);

// The dropout ops of one backend, over its `RUN(inputs, seed, p, out)`, which
// writes `out` (contiguous like inputs.x, possibly inputs.x itself). Both
// backends register these, so they validate and allocate alike.
using DropoutRunFn = void (*)(const DropoutInputs&, const at::Tensor& seed, double p,
                              const at::Tensor& out);

template <DropoutRunFn RUN, c10::DeviceType DEVICE>
struct DropoutOps {
  static at::Tensor dropout(const at::Tensor& x, const at::Tensor& seed, double p, int64_t group) {
    const DropoutInputs in =
        check_dropout_args("fastopt.dropout", x, seed, p, group, nullptr, c10::nullopt, DEVICE);
    at::Tensor out = at::empty_like(in.x);
    RUN(in, seed, p, out);
    return out;
  }

  static void dropout_(const at::Tensor& x, const at::Tensor& seed, double p, int64_t group) {
    const DropoutInputs in =
        check_dropout_args("fastopt.dropout_", x, seed, p, group, nullptr, c10::nullopt, DEVICE);
    RUN(in, seed, p, in.x);
    // A non-contiguous x was computed in a contiguous temporary.
    if (!in.x.is_same(x)) x.copy_(in.x);
  }

  static at::Tensor dropout_add(const at::Tensor& x, const at::Tensor& residual,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& seed,
                                double p) {
    const DropoutInputs in =
        check_dropout_args("fastopt.dropout_add", x, seed, p, 1, &residual, bias, DEVICE);
    at::Tensor out = at::empty_like(in.x);
    RUN(in, seed, p, out);
    return out;
  }
};

}  // namespace fastopt
