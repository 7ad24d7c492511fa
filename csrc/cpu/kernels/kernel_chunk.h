// What an optimizer op hands its per-ISA kernel: one run of elements.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/kernels/update_norms.h"

namespace fastopt::cpu {

// One contiguous run of `numel` elements of one parameter and its state:
// lists[l] points at list l's first element of the run (the op's list order,
// param first), or is null for an absent list (e.g. max_exp_avg_sqs without
// amsgrad). Plain data, so that it crosses from the op's translation unit
// into the per-ISA kernels without any shared inline code.
// How one op call stores its parameters, shared by every optimizer kernel.
// Without master weights, params, grads and state share one dtype. With them,
// the op's params are float32 masters (and the state float32), the grads keep
// the model's 16-bit dtype, and each updated master is also written, rounded,
// to a 16-bit copy: the model's parameter.
struct ParamStorage {
  c10::ScalarType grad_dtype;  // grads, and the copies when there are any
  bool copies;                 // KernelChunk::copy is set
  // Round bfloat16 stores of the parameter (the copy, or list 0 when there is
  // no copy) stochastically, from the stream of NOTE: [rounding stream].
  bool stochastic;
  uint32_t key0, key1, offset0, offset1;
};

template <int N>
struct KernelChunk {
  void* lists[N];
  int64_t numel;
  UpdateNorms* norms;  // null unless update ratios are tracked
  void* copy;          // the param copy's first element of the run, or null
  int64_t tensor;      // the tensor's index in the op call
  int64_t first;       // the run's first element index within its tensor
  const ParamStorage* storage;
};

}  // namespace fastopt::cpu
