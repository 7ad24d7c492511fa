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

}  // namespace

DropoutInputs check_dropout_args(const char* op, const at::Tensor& x, const at::Tensor& seed,
                                 double p, int64_t group, const at::Tensor* residual,
                                 const c10::optional<at::Tensor>& bias,
                                 c10::DeviceType device_type) {
  TORCH_CHECK(x.layout() == c10::kStrided, op, ": x must be a dense tensor");
  TORCH_CHECK(x.device().type() == device_type, op, ": x must be a ", device_type,
              " tensor, got one on ", x.device());
  const c10::ScalarType dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == c10::kFloat || dtype == c10::kDouble || dtype == c10::kBFloat16 ||
                       dtype == c10::kHalf,
                   op, ": supports float32, float64, bfloat16 and float16 tensors, got ", dtype);
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, op,
                    ": dropout probability has to be between 0 and 1, but got ", p);
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

  DropoutInputs in{x.contiguous(), at::Tensor(), at::Tensor(), group};
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

DropoutMaskParams dropout_mask_params(double p) {
  const bool drop_all = p >= 1.0;
  return {dropout_threshold(p), drop_all, drop_all ? 1.0 : 1.0 - p};
}

}  // namespace fastopt
