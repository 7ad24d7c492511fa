// The host side every CPU optimizer op shares around its kernel: the AMP skip,
// and the parallel walk over (tensor, chunk) work items with optional update
// norms.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

#include "common/tensor_lists.h"
#include "cpu/kernels/kernel_chunk.h"
#include "cpu/multi_tensor_apply.h"
#include "cpu/scalars.h"
#include "cpu/update_norms_output.h"

namespace fastopt::cpu {

// Whether AMP skips this step (found_inf set). A skipped step writes nothing,
// step counters included, except update_norms: zero, since nothing moved.
inline bool step_skipped(const c10::optional<at::Tensor>& found_inf,
                         const c10::optional<at::Tensor>& update_norms) {
  if (!found_inf.has_value() || read_scalar("found_inf", *found_inf) == 0.0) return false;
  if (update_norms.has_value()) update_norms->zero_();
  return true;
}

// Cuts the tensors of `flat` (N lists, param first) into work items and calls
// kernel(tensor, chunk) for each, in parallel; then fills update_norms (when
// given) and copies temporaries back into the caller's tensors.
template <int N, typename Kernel>
void run_fused_step(FlatTensorLists& flat, const c10::optional<at::Tensor>& update_norms,
                    const Kernel& kernel) {
  std::vector<int64_t> numels(flat.size());
  for (size_t i = 0; i < flat.size(); ++i) numels[i] = flat.numel(i);
  const WorkItems items(numels);
  UpdateNormsOutput norms(update_norms, flat.size(), items);
  items.parallel_for([&](size_t k, const WorkItem& item) {
    KernelChunk<N> chunk;
    for (int l = 0; l < N; ++l) chunk.lists[l] = flat.data_at(l, item.tensor, item.begin);
    chunk.numel = item.end - item.begin;
    chunk.norms = norms.slot(k);
    kernel(static_cast<size_t>(item.tensor), chunk);
  });
  norms.finish(items);
  flat.write_back();
}

}  // namespace fastopt::cpu
