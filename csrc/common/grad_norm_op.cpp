#include "common/grad_norm_op.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace fastopt {

void check_grad_norm_args(at::TensorList grads, double norm_type, c10::DeviceType device) {
  constexpr const char* op = "fastopt.grad_norm";
  TORCH_CHECK(!std::isnan(norm_type), op, ": norm_type must not be NaN");
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.defined(), op, ": grads[", i, "] is undefined");
    TORCH_CHECK(g.layout() == at::kStrided, op, " does not support sparse tensors, but grads[", i,
                "] has layout ", g.layout());
    TORCH_CHECK(g.device().type() == device, op, ": expected ", device, " tensors, but grads[", i,
                "] is on ", g.device());
    TORCH_CHECK(g.device() == grads[0].device(), op,
                ": all tensors must be on one device, but grads[", i, "] is on ", g.device(),
                " and grads[0] is on ", grads[0].device());
    TORCH_CHECK_TYPE(g.is_floating_point(), op, ": grads must be real floating point, but grads[",
                     i, "] is ", g.scalar_type());
  }
}

c10::ScalarType grad_norm_dtype(at::TensorList grads) {
  for (const at::Tensor& g : grads) {
    if (g.scalar_type() == at::kDouble) return at::kDouble;
  }
  return at::kFloat;
}

at::Tensor flat_for_norm(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

}  // namespace fastopt
