#include "cpu/update_norms_output.h"

#include <c10/util/Exception.h>

namespace fastopt::cpu {

UpdateNormsOutput::UpdateNormsOutput(const c10::optional<at::Tensor>& out, size_t num_tensors,
                                     const WorkItems& items) {
  if (!out.has_value()) return;
  out_ = *out;
  TORCH_CHECK(out_.device().is_cpu() && out_.is_contiguous(),
              "fastopt: update_norms must be a contiguous CPU tensor for CPU params");
  TORCH_CHECK_TYPE(out_.scalar_type() == c10::kDouble, "fastopt: update_norms must be float64, got ",
                   out_.scalar_type());
  TORCH_CHECK(out_.dim() == 2 && out_.size(0) == static_cast<int64_t>(num_tensors) &&
                  out_.size(1) == 2,
              "fastopt: update_norms must have shape [", num_tensors, ", 2], got ", out_.sizes());
  partial_.resize(items.size());
}

void UpdateNormsOutput::finish(const WorkItems& items) {
  if (!out_.defined()) return;
  double* rows = out_.data_ptr<double>();
  std::fill(rows, rows + out_.numel(), 0.0);
  for (size_t k = 0; k < items.size(); ++k) {
    rows[2 * items[k].tensor] += partial_[k].update_sq;
    rows[2 * items[k].tensor + 1] += partial_[k].param_sq;
  }
}

}  // namespace fastopt::cpu
