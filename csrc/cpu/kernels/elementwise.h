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

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/philox.h"
#include "common/storage.h"
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

// The arithmetic type of a storage type or of a Storage<V, G> (common/storage.h).
template <typename S>
struct OpmathOf {
  using type = at::opmath_type<typename as_storage_t<S>::value_t>;
  static_assert(std::is_same_v<type, at::opmath_type<typename as_storage_t<S>::grad_t>>,
                "one arithmetic type per call");
};
template <typename S>
using opmath_of = typename OpmathOf<S>::type;

// Loads and stores K arithmetic vectors (one block) of a storage type.
template <typename storage_t, int K>
struct BlockIO {
  using opmath_t = at::opmath_type<storage_t>;
  using Vec = at::vec::Vectorized<opmath_t>;
  static constexpr bool kReduced = !std::is_same_v<storage_t, opmath_t>;
  static constexpr int64_t kStep = Vec::size();
  static_assert(!kReduced || K % 2 == 0, "a 16-bit vector widens to two float vectors");

  static inline void load(const storage_t* p, Vec (&out)[K]) {
    for (int k = 0; k < K; k += (kReduced ? 2 : 1)) {
      if constexpr (kReduced) {
        auto [lo, hi] = at::vec::convert_to_float<storage_t>(
            at::vec::Vectorized<storage_t>::loadu(p + k * kStep));
        out[k] = lo;
        out[k + 1] = hi;
      } else {
        out[k] = Vec::loadu(p + k * kStep);
      }
    }
  }

  static inline void store(storage_t* p, const Vec (&in)[K]) {
    for (int k = 0; k < K; k += (kReduced ? 2 : 1)) {
      if constexpr (kReduced) {
        at::vec::convert_from_float<storage_t>(in[k], in[k + 1]).store(p + k * kStep);
      } else {
        in[k].store(p + k * kStep);
      }
    }
  }

  // The values as they will be stored: rounded to storage_t and widened back.
  static inline void round(Vec (&v)[K]) {
    if constexpr (kReduced) {
      for (int k = 0; k < K; k += 2) {
        auto [lo, hi] = at::vec::convert_to_float<storage_t>(
            at::vec::convert_from_float<storage_t>(v[k], v[k + 1]));
        v[k] = lo;
        v[k + 1] = hi;
      }
    }
  }
};

// Where the updated parameter of one run goes besides list 0, and how it is
// rounded (see ParamStorage).
struct RunStore {
  void* copy = nullptr;
  const ParamStorage* storage = nullptr;
  int64_t tensor = 0;
  int64_t first = 0;

  bool stochastic() const { return storage != nullptr && storage->stochastic; }
};

// Stores n floats as bfloat16, rounded stochastically (NOTE: [rounding
// stream]); `run.first` is the index of src[0] within its tensor.
// Kept out of line, and the optimizers' functors are FASTOPT_INLINE: once this
// store sat inline in the bf16 element loop, GCC stopped inlining the functors
// there, and a bf16 SGD step (16M, one thread) took 14 ms instead of 6.3.
[[gnu::noinline]] inline void store_bf16_stochastic(c10::BFloat16* dst, const float* src, int64_t n,
                                  const RunStore& run) {
  const DropoutKey key{run.storage->key0, run.storage->key1, run.storage->offset0,
                       run.storage->offset1};
  const uint32_t tensor = static_cast<uint32_t>(run.tensor);
  const uint64_t first = static_cast<uint64_t>(run.first);
  int64_t e = 0;
  if (first % 4 == 0) {
    // Whole groups of 4 elements, kLanes Philox calls at a time, each round
    // applied across lane arrays so that the compiler vectorizes the 32-bit
    // multiplies (as in the dropout kernel). Same words as rounding_words.
    constexpr int kLanes = 8;
    for (; e + 4 * kLanes <= n; e += 4 * kLanes) {
      uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
      for (int l = 0; l < kLanes; ++l) {
        const uint64_t quad = (first + static_cast<uint64_t>(e)) / 4 + static_cast<uint64_t>(l);
        c0[l] = static_cast<uint32_t>(quad);
        c1[l] = static_cast<uint32_t>(quad >> 32);
        c2[l] = key.o0 + tensor;
        c3[l] = key.o1;
      }
      uint32_t k0 = key.k0, k1 = key.k1;
      for (int r = 0; r < kPhiloxRounds; ++r) {
        for (int l = 0; l < kLanes; ++l) philox_round(c0[l], c1[l], c2[l], c3[l], k0, k1);
        k0 += kPhiloxW0;
        k1 += kPhiloxW1;
      }
      for (int l = 0; l < kLanes; ++l) {
        const uint32_t words[4] = {c0[l], c1[l], c2[l], c3[l]};
        for (int w = 0; w < 4; ++w) {
          uint32_t bits;
          std::memcpy(&bits, &src[e + 4 * l + w], sizeof(bits));
          dst[e + 4 * l + w] =
              c10::BFloat16(bf16_bits_stochastic(bits, words[w]), c10::BFloat16::from_bits());
        }
      }
    }
  }
  // The rest (and runs that do not start a group of 4), one element at a time.
  uint32_t words[4];
  uint64_t quad = ~uint64_t{0};
  for (; e < n; ++e) {
    const uint64_t j = first + static_cast<uint64_t>(e);
    if (j / 4 != quad) {
      quad = j / 4;
      rounding_words(key, tensor, quad, words);
    }
    uint32_t bits;
    std::memcpy(&bits, &src[e], sizeof(bits));
    dst[e] = c10::BFloat16(bf16_bits_stochastic(bits, words[j % 4]), c10::BFloat16::from_bits());
  }
}

template <bool kNorms, typename S, int DEPTH, typename Op>
void for_each_element_impl(void* const (&ptrs)[DEPTH], int64_t n, uint32_t written, const Op& op,
                           UpdateNorms* norms, const RunStore& run) {
  using V = typename S::value_t;
  using G = typename S::grad_t;
  using opmath_t = opmath_of<S>;
  using Vec = at::vec::Vectorized<opmath_t>;
  // Arithmetic vectors per block: enough for one SIMD vector of the narrower
  // storage type, so a bf16 grad and a float32 master load the same elements.
  constexpr int K = std::max(VecIO<V>::kVecs, VecIO<G>::kVecs);
  constexpr int64_t kBlock = K * Vec::size();
  using IOV = BlockIO<V, K>;
  using IOG = BlockIO<G, K>;
  // List 1 holds gradients, of grad_t.
  constexpr int kGradList = 1;
  constexpr bool kBf16Param = std::is_same_v<V, c10::BFloat16>;
  constexpr bool kBf16Copy = std::is_same_v<G, c10::BFloat16> && !std::is_same_v<V, G>;
  const bool sr_param = kBf16Param && run.copy == nullptr && run.stochastic();
  const bool sr_copy = kBf16Copy && run.stochastic();
#if defined(CPU_CAPABILITY_DEFAULT)
  // The baseline build has no SIMD Vectorized, and its generic fallback is
  // slower than plain scalar code, so the baseline leaves every element to the
  // scalar loop below, which the compiler vectorizes with SSE2 where it can.
  const int64_t vector_end = 0;
#else
  const int64_t vector_end = n - n % kBlock;
#endif

  Vec update_sq(0), param_sq(0);
  int64_t i = 0;
  for (; i < vector_end; i += kBlock) {
    Vec v[K][DEPTH];
    for (int d = 0; d < DEPTH; ++d) {
      Vec block[K];
      if (d == kGradList) {
        IOG::load(static_cast<const G*>(ptrs[d]) + i, block);
      } else {
        IOV::load(static_cast<const V*>(ptrs[d]) + i, block);
      }
      for (int k = 0; k < K; ++k) v[k][d] = block[k];
    }
    Vec before[K];
    for (int k = 0; k < K; ++k) {
      before[k] = v[k][0];
      op(v[k]);
    }
    for (int d = 0; d < DEPTH; ++d) {
      if (!(written & (1u << d))) continue;
      Vec block[K];
      for (int k = 0; k < K; ++k) block[k] = v[k][d];
      if (d == kGradList) {
        IOG::store(static_cast<G*>(ptrs[d]) + i, block);
      } else if (d == 0 && sr_param) {
        if constexpr (kBf16Param) {
          float values[kBlock];
          for (int k = 0; k < K; ++k) block[k].store(values + k * Vec::size());
          RunStore at = run;
          at.first += i;
          store_bf16_stochastic(static_cast<V*>(ptrs[0]) + i, values, kBlock, at);
        }
      } else {
        IOV::store(static_cast<V*>(ptrs[d]) + i, block);
      }
    }
    if constexpr (!std::is_same_v<V, G>) {
      if (run.copy != nullptr) {
        Vec block[K];
        for (int k = 0; k < K; ++k) block[k] = v[k][0];
        if (sr_copy) {
          if constexpr (kBf16Copy) {
            float values[kBlock];
            for (int k = 0; k < K; ++k) block[k].store(values + k * Vec::size());
            RunStore at = run;
            at.first += i;
            store_bf16_stochastic(static_cast<G*>(run.copy) + i, values, kBlock, at);
          }
        } else {
          IOG::store(static_cast<G*>(run.copy) + i, block);
        }
      }
    }
    if constexpr (kNorms) {
      // The change as stored: for 16-bit params, updates lost to rounding
      // count as lost; a stochastic rounding is read back from the L1 line it
      // was just written to.
      Vec after[K];
      if (sr_param) {
        IOV::load(static_cast<const V*>(ptrs[0]) + i, after);
      } else {
        for (int k = 0; k < K; ++k) after[k] = v[k][0];
        IOV::round(after);
      }
      for (int k = 0; k < K; ++k) {
        const Vec delta = after[k] - before[k];
        update_sq = at::vec::fmadd(delta, delta, update_sq);
        param_sq = at::vec::fmadd(before[k], before[k], param_sq);
      }
    }
  }

  double tail_update_sq = 0.0, tail_param_sq = 0.0;
  for (; i < n; ++i) {
    opmath_t v[DEPTH];
    for (int d = 0; d < DEPTH; ++d) {
      v[d] = d == kGradList ? static_cast<opmath_t>(static_cast<const G*>(ptrs[d])[i])
                            : static_cast<opmath_t>(static_cast<const V*>(ptrs[d])[i]);
    }
    const opmath_t before = v[0];
    op(v);
    RunStore at = run;
    at.first += i;
    for (int d = 0; d < DEPTH; ++d) {
      if (!(written & (1u << d))) continue;
      if (d == kGradList) {
        static_cast<G*>(ptrs[d])[i] = static_cast<G>(v[d]);
      } else if (d == 0 && sr_param) {
        if constexpr (kBf16Param) {
          const float value = v[0];
          store_bf16_stochastic(static_cast<V*>(ptrs[0]) + i, &value, 1, at);
        }
      } else {
        static_cast<V*>(ptrs[d])[i] = static_cast<V>(v[d]);
      }
    }
    if constexpr (!std::is_same_v<V, G>) {
      if (run.copy != nullptr) {
        if (sr_copy) {
          if constexpr (kBf16Copy) {
            const float value = v[0];
            store_bf16_stochastic(static_cast<G*>(run.copy) + i, &value, 1, at);
          }
        } else {
          static_cast<G*>(run.copy)[i] = static_cast<G>(v[0]);
        }
      }
    }
    if constexpr (kNorms) {
      const V stored = sr_param ? static_cast<const V*>(ptrs[0])[i] : static_cast<V>(v[0]);
      const double delta = static_cast<double>(static_cast<opmath_t>(stored)) - static_cast<double>(before);
      tail_update_sq += delta * delta;
      tail_param_sq += static_cast<double>(before) * static_cast<double>(before);
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
// be the parameter (or its float32 master) and list 1 the gradient, stored as
// S::grad_t. With `norms`, the loop also sums the squared change of list 0 as
// stored and its squared value before op, from registers, in no extra pass;
// without `norms` that code is compiled out. `run` says where a rounded copy
// of list 0 goes (master weights) and whether bf16 stores round stochastically.
template <typename S, int DEPTH, typename Op>
void for_each_element(void* const (&ptrs)[DEPTH], int64_t n, uint32_t written, const Op& op,
                      UpdateNorms* norms, const RunStore& run) {
  using St = as_storage_t<S>;
  if (norms != nullptr) {
    for_each_element_impl<true, St>(ptrs, n, written, op, norms, run);
  } else {
    for_each_element_impl<false, St>(ptrs, n, written, op, norms, run);
  }
}

// The same for lists that all have storage type scalar_t.
template <typename scalar_t, int DEPTH, typename Op>
void for_each_element(scalar_t* const (&ptrs)[DEPTH], int64_t n, uint32_t written, const Op& op,
                      UpdateNorms* norms) {
  void* raw[DEPTH];
  for (int d = 0; d < DEPTH; ++d) raw[d] = ptrs[d];
  for_each_element<scalar_t>(raw, n, written, op, norms, RunStore{});
}

// The same over a kernel chunk, whose first DEPTH lists are all present (an
// optimizer passes fewer than N lists when optional state, such as amsgrad's
// max_exp_avg_sqs, is absent). S is a storage type or a Storage<V, G>.
template <typename S, int DEPTH, int N, typename Op>
void for_each_element(const KernelChunk<N>& chunk, uint32_t written, const Op& op) {
  static_assert(DEPTH <= N, "a chunk has N lists");
  void* ptrs[DEPTH];
  for (int d = 0; d < DEPTH; ++d) ptrs[d] = chunk.lists[d];
  const RunStore run{chunk.copy, chunk.storage, chunk.tensor, chunk.first};
  for_each_element<S>(ptrs, chunk.numel, written, op, chunk.norms, run);
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

// Calls fn(StorageType<S>{}) with the storage of an optimizer call: the plain
// dtype, or, with master weights (storage->copies), Storage<float, G> for the
// 16-bit grad and copy dtype G.
template <typename Fn>
void dispatch_param_storage(c10::ScalarType dtype, const ParamStorage* storage, const Fn& fn) {
  if (storage != nullptr && storage->copies) {
    switch (storage->grad_dtype) {
      case c10::ScalarType::BFloat16: return fn(StorageType<Storage<float, c10::BFloat16>>{});
      case c10::ScalarType::Half: return fn(StorageType<Storage<float, c10::Half>>{});
      default: return;
    }
  }
  dispatch_storage_type(dtype, fn);
}

}  // namespace CPU_CAPABILITY
}  // namespace fastopt::cpu
