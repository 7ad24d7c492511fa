#include "common/dropout_op.h"

#include <c10/util/Exception.h>

#include "common/philox.h"

namespace fastopt {

namespace {

void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.layout() == c10::kStrided, op, ": ", name, " must be a dense tensor");
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device (", x.device(),
              "), got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype (",
                   x.scalar_type(), "), got ", t.scalar_type());
}

// The checks of the tensor a dropout op transforms (x, or grad) and of p.
void check_input(const char* op, const char* name, const at::Tensor& t, double p,
                 c10::DeviceType device_type) {
  TORCH_CHECK(t.layout() == c10::kStrided, op, ": ", name, " must be a dense tensor");
  TORCH_CHECK(t.device().type() == device_type, op, ": ", name, " must be a ", device_type,
              " tensor, got one on ", t.device());
  const c10::ScalarType dtype = t.scalar_type();
  const bool supported = dtype == c10::kFloat || dtype == c10::kDouble || dtype == c10::kBFloat16 ||
                         dtype == c10::kHalf;
  // torch's dropout raises RuntimeError for an integer or bool tensor (its
  // float mask cannot be cast to it), and NotImplementedError where its
  // sampling has no kernel for the dtype (complex, float8).
  constexpr const char* kSupported = ": supports float32, float64, bfloat16 and float16 tensors, got ";
  TORCH_CHECK(supported || !c10::isIntegralType(dtype, /*includeBool=*/true), op, kSupported, dtype);
  TORCH_CHECK_NOT_IMPLEMENTED(supported, op, kSupported, dtype);
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, op,
                    ": dropout probability has to be between 0 and 1, but got ", p);
}

}  // namespace

int64_t channels_last_channels(const at::Tensor& x, int64_t group) {
  if (group <= 1 || x.dim() < 3 || x.numel() == 0 || x.is_contiguous()) return 0;
  const int64_t channels = x.size(1);
  if (x.size(0) * channels * group != x.numel()) return 0;  // group is not the spatial size
  // Dims from innermost in memory: C, then the spatial dims in order, then N.
  // Size-1 dims may have any stride, as in is_contiguous.
  int64_t expected = 1;
  const auto next = [&](int64_t d) {
    const bool ok = x.size(d) == 1 || x.stride(d) == expected;
    expected *= x.size(d);
    return ok;
  };
  if (!next(1)) return 0;
  for (int64_t d = x.dim() - 1; d >= 2; --d) {
    if (!next(d)) return 0;
  }
  return next(0) ? channels : 0;
}

DropoutInputs check_dropout_args(const char* op, const at::Tensor& x, const at::Tensor& seed,
                                 double p, int64_t group, const at::Tensor* residual,
                                 const c10::optional<at::Tensor>& bias,
                                 c10::DeviceType device_type, bool native_channels_last) {
  check_input(op, "x", x, p, device_type);
  TORCH_CHECK_TYPE(seed.scalar_type() == c10::kLong, op, ": seed must be int64, got ",
                   seed.scalar_type());
  TORCH_CHECK(seed.numel() == 2, op, ": seed must hold 2 words (key, offset), got ",
              seed.numel());
  // The CPU op reads the words on the host; CUDA kernels read them on the
  // device, so that CUDA graphs replay with the words of each replay.
  const c10::Device seed_device = device_type == c10::DeviceType::CPU ? c10::Device(c10::kCPU)
                                                                      : x.device();
  TORCH_CHECK(seed.device() == seed_device, op, ": seed must be on ", seed_device, ", got ",
              seed.device());
  TORCH_CHECK_VALUE(group >= 1, op, ": group must be >= 1, got ", group);
  TORCH_CHECK_VALUE(x.numel() % group == 0, op, ": group (", group,
                    ") must divide the number of elements (", x.numel(), ")");

  const int64_t channels = native_channels_last ? channels_last_channels(x, group) : 0;
  DropoutInputs in{channels > 0 ? x : x.contiguous(), at::Tensor(), at::Tensor(), group};
  in.channels = channels;
  if (residual != nullptr) {
    check_like_x(op, "residual", *residual, x);
    TORCH_CHECK(residual->sizes() == x.sizes(), op, ": residual must have x's shape ", x.sizes(),
                ", got ", residual->sizes());
    in.residual = residual->contiguous();
  }
  if (bias.has_value()) {
    check_like_x(op, "bias", *bias, x);
    TORCH_CHECK(x.dim() >= 1 && bias->dim() == 1 && bias->size(0) == x.size(-1), op,
                ": bias must be 1-D with x.size(-1) elements (x has shape ", x.sizes(),
                "), got shape ", bias->sizes());
    in.bias = bias->contiguous();
  }
  return in;
}

DropoutInputs check_dropout_bits_args(const char* op, const at::Tensor& grad,
                                      const at::Tensor& bits, double p,
                                      c10::DeviceType device_type) {
  check_input(op, "grad", grad, p, device_type);
  TORCH_CHECK(bits.layout() == c10::kStrided, op, ": bits must be a dense tensor");
  TORCH_CHECK_TYPE(bits.scalar_type() == c10::kByte, op, ": bits must be uint8, got ",
                   bits.scalar_type());
  TORCH_CHECK(bits.device() == grad.device(), op, ": bits must be on grad's device (",
              grad.device(), "), got ", bits.device());
  TORCH_CHECK_VALUE(bits.dim() == 1 && bits.numel() == dropout_mask_bytes(grad.numel()), op,
                    ": bits must be the 1-D mask of dropout_bits for ", grad.numel(),
                    " elements (", dropout_mask_bytes(grad.numel()), " bytes), got shape ",
                    bits.sizes());
  DropoutInputs in{grad.contiguous(), at::Tensor(), at::Tensor(), 1};
  in.bits_in = bits.contiguous();
  return in;
}

DropoutMaskParams dropout_mask_params(double p) {
  const bool drop_all = p >= 1.0;
  return {dropout_threshold(p), drop_all, drop_all ? 1.0 : 1.0 - p};
}

}  // namespace fastopt
