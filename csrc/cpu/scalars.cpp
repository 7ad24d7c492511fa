#include "cpu/scalars.h"

#include <c10/util/Exception.h>

namespace fastopt::cpu {

double read_scalar(const char* what, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "fastopt: ", what, " must be a CPU tensor for CPU params, got ",
              t.device());
  return t.item<double>();
}

double increment_step(const at::Tensor& step) {
  TORCH_CHECK(step.device().is_cpu(), "fastopt: step counters of CPU params must be on the CPU");
  switch (step.scalar_type()) {
    case c10::ScalarType::Float: {
      float* s = step.data_ptr<float>();
      *s += 1.0f;
      return *s;
    }
    case c10::ScalarType::Double: {
      double* s = step.data_ptr<double>();
      *s += 1.0;
      return *s;
    }
    default:
      step.add_(1);
      return step.item<double>();
  }
}

void check_supported_dtype(const char* op, c10::ScalarType dtype) {
  TORCH_CHECK_TYPE(dtype == c10::kFloat || dtype == c10::kDouble || dtype == c10::kBFloat16 ||
                       dtype == c10::kHalf,
                   op, ": supports float32, float64, bfloat16 and float16 tensors, got ", dtype);
}

}  // namespace fastopt::cpu
