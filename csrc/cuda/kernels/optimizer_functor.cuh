// What the optimizer functors (adam, sgd, adagrad, rmsprop) share on top of
// the multi-tensor-apply driver: the per-call scalars as the kernels read them,
// the per-tensor hyperparameter table, the storage dispatch (plain, or float32
// masters with 16-bit copies) and the launch sequence.
#pragma once

#include <cuda_runtime.h>

#include "cuda/kernels/multi_tensor_apply.cuh"
#include "cuda/kernels/optimizer_launch.h"

namespace fastopt::cuda {

// The scalars of one call every optimizer functor reads per chunk, in the
// kernel arguments.
struct StepScalars {
  double lr;
  const float* lr_ptr;
  const double* hparams;
  const double* grad_scale;
  const float* found_inf;

  static StepScalars of(const OptimizerLaunch& l) {
    return StepScalars{l.lr, l.lr_ptr, l.hparams, l.grad_scale, l.found_inf};
  }

  // Whether AMP skips this step. Every thread reads the same address, so the
  // whole block returns together, as NOTE: [update norms] requires.
  __device__ __forceinline__ bool skipped() const {
    return found_inf != nullptr && *found_inf != 0.f;
  }

  // NOTE: [hyperparameter table] on CUDA: the table lives in device memory
  // and a block reads the row of its chunk's tensor (a broadcast of N doubles,
  // once per chunk), so the tensors of many param groups share one launch.
  // `values` holds the call's scalars in the table's column order, column 0
  // (lr) aside, which comes from lr or the Tensor lr; a table row replaces
  // them all.
  template <int N>
  __device__ __forceinline__ void read(int tensor, double (&values)[N]) const {
    if (hparams != nullptr) {
      const double* row = hparams + static_cast<int64_t>(tensor) * N;
#pragma unroll
      for (int c = 0; c < N; ++c) values[c] = row[c];
    } else {
      values[0] = lr_ptr != nullptr ? static_cast<double>(*lr_ptr) : lr;
    }
  }

  __device__ __forceinline__ bool unscale() const { return grad_scale != nullptr; }

  // What gradients are divided by: grad_scale, or 1 (unused) without unscaling.
  template <typename M>
  __device__ __forceinline__ M grad_divisor() const {
    return grad_scale != nullptr ? static_cast<M>(*grad_scale) : M(1);
  }
};

// Calls fn(StorageType<S>{}) with the Storage of the call: one dtype for
// every list, or float32 masters and state with 16-bit grads and copies.
template <typename Fn>
void dispatch_storage(const OptimizerLaunch& l, Fn&& fn) {
  if (l.param_copies != nullptr) {
    if (l.grad_dtype == DType::BFloat16) return fn(StorageType<Storage<float, __nv_bfloat16>>{});
    return fn(StorageType<Storage<float, __half>>{});
  }
  dispatch_dtype(l.dtype, [&](auto t) { fn(StorageType<Storage<typename decltype(t)::type>>{}); });
}

// TensorLists with the call's params (list 0), grads (list 1), copies, step
// counters, update norms and rounding seed; the caller adds its state lists.
template <int DEPTH>
TensorLists<DEPTH> optimizer_lists(const OptimizerLaunch& l) {
  static_assert(DEPTH > kGradList, "an optimizer reads params and grads");
  TensorLists<DEPTH> out{};
  out.ptrs[0] = l.params;
  out.ptrs[kGradList] = l.grads;
  out.copies = l.param_copies;
  out.numels = l.numels;
  out.steps = l.steps;
  out.norms = l.update_norms;
  out.rounding_seed = l.rounding_seed;
  out.num_tensors = l.num_tensors;
  return out;
}

// Enqueues one optimizer step: the step counters' increment first (NOTE:
// [step counters]), then launch(StorageType<S>{}) for the call's Storage.
template <typename Fn>
void launch_optimizer(const OptimizerLaunch& l, cudaStream_t stream, Fn&& launch) {
  if (l.num_tensors == 0) return;
  if (l.steps != nullptr) increment_steps(l.steps, l.num_tensors, l.found_inf, stream);
  dispatch_storage(l, launch);
}

}  // namespace fastopt::cuda
