// Validation and launch parameters shared by the CPU and CUDA dropout ops, so
// that both reject bad input with the same exception types and messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <initializer_list>
#include <tuple>

namespace fastopt {

// The inputs of one dropout call, as the kernels see them: contiguous (so the
// logical, row-major index is the memory index, and layout never changes the
// mask), with undefined tensors for absent operands. The one exception is
// channel-wise dropout of a channels-last input on a backend that takes it
// natively (`channels` > 0, see channels_last_channels).
struct DropoutInputs {
  at::Tensor x;
  at::Tensor residual;
  at::Tensor bias;
  int64_t group;  // elements per mask index
  // The 1-bit mask mode (group == 1): uint8 arrays of dropout_mask_bytes(n).
  // bits_out, when defined, receives the drawn mask; bits_in, when defined,
  // is the mask to apply instead of a draw (and the seed is then not read).
  at::Tensor bits_out;
  at::Tensor bits_in;
  // 0, or C when x is stored as (N, spatial..., C) with `group` spatial
  // elements: memory element i then has mask index
  // (i / (group * C)) * C + i % C, its (n, c), as in the contiguous order.
  int64_t channels = 0;
};

// C = x.size(1) when channel-wise dropout of x with `group` elements per
// channel can run in x's own memory: x holds its (n, spatial..., c) elements
// densely with c innermost (channels_last, channels_last_3d, or (N, L, C)
// storage of a (N, C, L) tensor) and is not contiguous; else 0.
int64_t channels_last_channels(const at::Tensor& x, int64_t group);

// Bytes of a bit-packed mask of n elements: one bit per element, rounded up
// to a multiple of 64 elements (8 bytes, a CUDA Philox block), so that CUDA's
// half-warps store whole 16-bit words; the CPU writes only the bytes of its
// n elements. The bits past n are unspecified.
inline int64_t dropout_mask_bytes(int64_t n) {
  return (n + 63) / 64 * 8;
}

// Checks a dropout op's arguments: x float32/float64/bfloat16/float16;
// 0 <= p <= 1; `seed` two int64 words on `seed_device`; group >= 1 dividing
// x.numel(); residual (when given) like x; bias (when given) 1-D of x.size(-1)
// elements, x's dtype and device. `device_type` is the backend's, and
// `native_channels_last` whether its kernel takes DropoutInputs::channels.
DropoutInputs check_dropout_args(const char* op, const at::Tensor& x, const at::Tensor& seed,
                                 double p, int64_t group, const at::Tensor* residual,
                                 const c10::optional<at::Tensor>& bias,
                                 c10::DeviceType device_type, bool native_channels_last);

// The per-call mask parameters derived from p (see common/philox.h).
struct DropoutMaskParams {
  uint32_t threshold;
  bool drop_all;
  double keep_prob;  // divisor of kept elements; 1 when drop_all (nothing is kept)
};

DropoutMaskParams dropout_mask_params(double p);

// Checks the arguments of dropout_from_bits: grad as x of a dropout op, and
// bits a uint8 array of dropout_mask_bytes(grad.numel()) on grad's device.
DropoutInputs check_dropout_bits_args(const char* op, const at::Tensor& grad,
                                      const at::Tensor& bits, double p,
                                      c10::DeviceType device_type);

// The dropout ops of one backend, over its `RUN(inputs, seed, p, out)`, which
// writes `out` (contiguous like inputs.x, possibly inputs.x itself) and, when
// inputs.bits_out is defined, the mask bits; `seed` is undefined when
// inputs.bits_in is defined. Both
// backends register these, so they validate and allocate alike.
using DropoutRunFn = void (*)(const DropoutInputs&, const at::Tensor& seed, double p,
                              const at::Tensor& out);

// How a backend allocates an output like x (the CPU caches large blocks,
// see cpu/output_cache.h).
using DropoutAllocFn = at::Tensor (*)(const at::Tensor& like);

// NATIVE_CHANNELS_LAST: whether RUN takes DropoutInputs::channels.
template <DropoutRunFn RUN, DropoutAllocFn EMPTY_LIKE, c10::DeviceType DEVICE, bool NATIVE_CHANNELS_LAST>
struct DropoutOps {
  static DropoutInputs inputs(const char* op, const at::Tensor& x, const at::Tensor& seed, double p,
                              int64_t group, const at::Tensor* residual = nullptr,
                              const c10::optional<at::Tensor>& bias = c10::nullopt) {
    return check_dropout_args(op, x, seed, p, group, residual, bias, DEVICE, NATIVE_CHANNELS_LAST);
  }

  // NOTE: [dropout memory format]
  // torch's dropout returns the result of a dense input (no gaps, no
  // overlap) in that input's strides: a channels-last input's result is
  // channels-last, which the next layer (a channels-last convolution) relies
  // on, and a transposed one's is transposed. The kernels work in the logical
  // element order (NOTE: [dropout stream]), so such an input is computed in
  // a contiguous copy and the result copied back to the input's strides: two
  // passes more than a contiguous input. The exception is channel-wise
  // dropout of a channels-last input on the CPU, whose kernel maps each
  // element's memory index to its channel's mask index (DropoutInputs::
  // channels): there the transposing copies took 7 times as long as the pass
  // itself, and torch's own dropout2d takes such an input natively.
  // Inputs with gaps give a contiguous result, as torch's do.
  // fastopt/_ops/dropout.py's fake kernels mirror this.
  static at::Tensor in_format_of(const at::Tensor& x, const DropoutInputs& in, const at::Tensor& out) {
    if (in.x.is_same(x) || !x.is_non_overlapping_and_dense()) return out;
    at::Tensor shaped = EMPTY_LIKE(x);  // x's strides: x is dense
    shaped.copy_(out);
    return shaped;
  }

  // group is a SymInt as in the autograd kernel (csrc/autograd/dropout_autograd.cpp),
  // whose signature every kernel of the op must share; here it is concrete.
  static at::Tensor dropout(const at::Tensor& x, const at::Tensor& seed, double p, c10::SymInt group) {
    const DropoutInputs in = inputs("fastopt.dropout", x, seed, p, group.expect_int());
    at::Tensor out = EMPTY_LIKE(in.x);
    RUN(in, seed, p, out);
    return in_format_of(x, in, out);
  }

  static void dropout_(const at::Tensor& x, const at::Tensor& seed, double p, int64_t group) {
    const DropoutInputs in = inputs("fastopt.dropout_", x, seed, p, group);
    RUN(in, seed, p, in.x);
    // Any other non-contiguous x was computed in a contiguous temporary.
    if (!in.x.is_same(x)) x.copy_(in.x);
  }

  // The 1-bit mask mode: the output and the drawn mask, bit-packed.
  static std::tuple<at::Tensor, at::Tensor> dropout_bits(const at::Tensor& x,
                                                         const at::Tensor& seed, double p) {
    DropoutInputs in = inputs("fastopt.dropout_bits", x, seed, p, 1);
    at::Tensor out = EMPTY_LIKE(in.x);
    in.bits_out = at::empty({dropout_mask_bytes(in.x.numel())}, x.options().dtype(at::kByte));
    RUN(in, seed, p, out);
    return {in_format_of(x, in, out), in.bits_out};
  }

  // grad * mask / (1 - p) with the mask of an earlier dropout_bits call.
  static at::Tensor dropout_from_bits(const at::Tensor& grad, const at::Tensor& bits, double p) {
    const DropoutInputs in =
        check_dropout_bits_args("fastopt.dropout_from_bits", grad, bits, p, DEVICE);
    at::Tensor out = EMPTY_LIKE(in.x);
    RUN(in, at::Tensor(), p, out);
    return in_format_of(grad, in, out);
  }

  static at::Tensor dropout_add(const at::Tensor& x, const at::Tensor& residual,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& seed,
                                double p) {
    const DropoutInputs in = inputs("fastopt.dropout_add", x, seed, p, 1, &residual, bias);
    at::Tensor out = EMPTY_LIKE(in.x);
    RUN(in, seed, p, out);
    return in_format_of(x, in, out);
  }
};

}  // namespace fastopt
