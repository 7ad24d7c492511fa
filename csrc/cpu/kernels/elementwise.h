// The element loop shared by every CPU optimizer kernel.
//
// Included only by the per-ISA kernel translation units (see cpu/isa.h). An
// optimizer supplies its per-element math as a functor with a templated
// call operator; this loop does the loads, the conversions to the arithmetic
// type, the stores, and the optional update-norm accumulation, once for all
// optimizers. It is the CPU counterpart of Chunk::for_each in
// csrc/cuda/kernels/multi_tensor_apply.cuh.
#pragma once

#include <ATen/cpu/vec/functional.h>  // vec_reduce_all

#include <cstdint>
#include <type_traits>

#include <ATen/cpu/vec/functional.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/kernels/kernel_chunk.h"
#include "cpu/kernels/update_norms.h"
#include "cpu/kernels/vec_io.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {

// Per-tensor coefficients C<T> of an optimizer, both as SIMD vectors (for
// the vector loop) and as scalars (for the tail), built once per chunk.
template <template <typename> class C, typename opmath_t>
struct Broadcast {
  using Vec = at::vec::Vectorized<opmath_t>;
  C<Vec> vec;
  C<opmath_t> scalar;

  template <typename Scalars>
  explicit Broadcast(const Scalars& s) : vec(s), scalar(s) {}

  template <typename T>
  const C<T>& get() const {
    if constexpr (std::is_same_v<T, Vec>) {
      return vec;
    } else {
      return scalar;
    }
  }
};

template <bool kNorms, typename scalar_t, int DEPTH, typename Op>
void for_each_element_impl(scalar_t* const (&ptrs)[DEPTH], int64_t n, uint32_t written,
                           const Op& op, UpdateNorms* norms) {
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using Vec = typename IO::Vec;
  constexpr int K = IO::kVecs;
#if defined(CPU_CAPABILITY_DEFAULT)
  // The baseline build has no SIMD Vectorized, and its generic fallback is
  // slower than plain scalar code, so the baseline leaves every element to the
  // scalar loop below, which the compiler vectorizes with SSE2 where it can.
  const int64_t vector_end = 0;
#else
  const int64_t vector_end = n - n % IO::kBlock;
#endif

  Vec update_sq(0), param_sq(0);
  int64_t i = 0;
  for (; i < vector_end; i += IO::kBlock) {
    Vec v[K][DEPTH];
    for (int d = 0; d < DEPTH; ++d) {
      Vec block[K];
      IO::load(ptrs[d] + i, block);
      for (int k = 0; k < K; ++k) v[k][d] = block[k];
    }
    Vec before[K];
    for (int k = 0; k < K; ++k) {
      before[k] = v[k][0];
      op(v[k]);
    }
    if constexpr (kNorms) {
      // The change as stored: for 16-bit params, updates lost to rounding count as lost.
      Vec after[K];
      for (int k = 0; k < K; ++k) after[k] = v[k][0];
      IO::round(after);
      for (int k = 0; k < K; ++k) {
        const Vec delta = after[k] - before[k];
        update_sq = at::vec::fmadd(delta, delta, update_sq);
        param_sq = at::vec::fmadd(before[k], before[k], param_sq);
      }
    }
    for (int d = 0; d < DEPTH; ++d) {
      if (!(written & (1u << d))) continue;
      Vec block[K];
      for (int k = 0; k < K; ++k) block[k] = v[k][d];
      IO::store(ptrs[d] + i, block);
    }
  }

  double tail_update_sq = 0.0, tail_param_sq = 0.0;
  for (; i < n; ++i) {
    opmath_t v[DEPTH];
    for (int d = 0; d < DEPTH; ++d) v[d] = static_cast<opmath_t>(ptrs[d][i]);
    const opmath_t before = v[0];
    op(v);
    if constexpr (kNorms) {
      const double after = static_cast<double>(static_cast<opmath_t>(static_cast<scalar_t>(v[0])));
      const double delta = after - static_cast<double>(before);
      tail_update_sq += delta * delta;
      tail_param_sq += static_cast<double>(before) * static_cast<double>(before);
    }
    for (int d = 0; d < DEPTH; ++d) {
      if (written & (1u << d)) ptrs[d][i] = static_cast<scalar_t>(v[d]);
    }
  }

  if constexpr (kNorms) {
    norms->update_sq = tail_update_sq + at::vec::vec_reduce_all(
        [](Vec a, Vec b) { return a + b; }, update_sq);
    norms->param_sq = tail_param_sq + at::vec::vec_reduce_all(
        [](Vec a, Vec b) { return a + b; }, param_sq);
  }
}

// Calls op(v) for every element of a run of `n` elements, where v[d] is list
// d's element in the arithmetic type: a SIMD vector in the main loop, a
// scalar in the tail, so op's call operator is a template over that type.
// Lists whose bit (1u << d) is set in `written` are stored back. List 0 must
// be the parameter: with `norms`, the loop also sums the squared change of
// list 0 as stored (rounded to scalar_t) and its squared value before op, from
// registers, in no extra pass.
// Without `norms` that code is compiled out.
template <typename scalar_t, int DEPTH, typename Op>
void for_each_element(scalar_t* const (&ptrs)[DEPTH], int64_t n, uint32_t written, const Op& op,
                      UpdateNorms* norms) {
  if (norms != nullptr) {
    for_each_element_impl<true>(ptrs, n, written, op, norms);
  } else {
    for_each_element_impl<false>(ptrs, n, written, op, norms);
  }
}

// The same over a kernel chunk, whose first DEPTH lists are all present and of
// storage type scalar_t (an optimizer passes fewer than N lists when optional
// state, such as amsgrad's max_exp_avg_sqs, is absent).
template <typename scalar_t, int DEPTH, int N, typename Op>
void for_each_element(const KernelChunk<N>& chunk, uint32_t written, const Op& op) {
  static_assert(DEPTH <= N, "a chunk has N lists");
  scalar_t* ptrs[DEPTH];
  for (int d = 0; d < DEPTH; ++d) ptrs[d] = static_cast<scalar_t*>(chunk.lists[d]);
  for_each_element(ptrs, chunk.numel, written, op, chunk.norms);
}

template <typename T>
struct StorageType {
  using type = T;
};

// Calls fn(StorageType<scalar_t>{}) for the storage types the kernels support.
// Ops validate the dtype before they pick a kernel, so an unknown one does
// nothing: kernel TUs must not throw, lest they emit shared (weak) c10 error
// symbols that differ between ISAs (see cpu/isa.h).
template <typename Fn>
void dispatch_storage_type(c10::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case c10::ScalarType::Float: return fn(StorageType<float>{});
    case c10::ScalarType::Double: return fn(StorageType<double>{});
    case c10::ScalarType::BFloat16: return fn(StorageType<c10::BFloat16>{});
    case c10::ScalarType::Half: return fn(StorageType<c10::Half>{});
    default: return;
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fastopt::cpu
