// The optional `update_norms` output of the CPU optimizer ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

#include "cpu/kernels/update_norms.h"
#include "cpu/multi_tensor_apply.h"

namespace fastopt::cpu {

// Collects per-item UpdateNorms while the kernels run, then writes one row
// (sum of squared updates, sum of squared params) per tensor into `out`, a
// float64 tensor of shape [num_tensors, 2]. Summing the items of a tensor in
// item order after the parallel loop makes the result independent of how
// the threads took the items.
class UpdateNormsOutput {
 public:
  UpdateNormsOutput(const c10::optional<at::Tensor>& out, size_t num_tensors,
                    const WorkItems& items);

  // Where item k's kernel accumulates; null when the output is not wanted,
  // which compiles the accumulation out of the kernel's loop.
  UpdateNorms* slot(size_t k) { return out_.defined() ? &partial_[k] : nullptr; }

  void finish(const WorkItems& items);

 private:
  at::Tensor out_;
  std::vector<UpdateNorms> partial_;
};

}  // namespace fastopt::cpu
