// What an optimizer op hands its per-ISA kernel: one run of elements.
#pragma once

#include <cstdint>

#include "cpu/kernels/update_norms.h"

namespace fastopt::cpu {

// One contiguous run of `numel` elements of one parameter and its state:
// lists[l] points at list l's first element of the run (the op's list order,
// param first), or is null for an absent list (e.g. max_exp_avg_sqs without
// amsgrad). Plain data, so that it crosses from the op's translation unit
// into the per-ISA kernels without any shared inline code.
template <int N>
struct KernelChunk {
  void* lists[N];
  int64_t numel;
  UpdateNorms* norms;  // null unless update ratios are tracked
};

}  // namespace fastopt::cpu
