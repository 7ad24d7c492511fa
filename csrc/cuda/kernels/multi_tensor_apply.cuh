// The one multi-tensor-apply driver of fastopt's CUDA optimizers.
//
// An optimizer step touches every parameter, and a model has hundreds of them,
// many small. One kernel per tensor would be dominated by launch latency, so
// the driver packs the pointers and sizes of many tensors into the arguments of
// one kernel, whose blocks walk the tensors in chunks of kChunkSize elements.
//
// The driver knows nothing about optimizers. An optimizer is a functor:
//
//   struct MyFunctor {
//     using storage_t = Storage<float>;  // element types of the lists (or plain float)
//     static constexpr int kDepth = 3;   // lists per tensor: param, grad, state...
//     __device__ void operator()(const Chunk<storage_t, kDepth>& chunk, const float* step) const;
//   };
//
// called once per chunk with that chunk of every list, and the tensor's step
// counter (null when the caller passes none). It reads its per-tensor scalars
// (chunk.tensor is the tensor's index in the call, e.g. its row of a
// hyperparameter table) and then runs its element-wise math with
// chunk.for_each, which does the loads and stores. Plain data in the functor
// (hyperparameters, device pointers to lr or grad_scale) travels in the kernel
// arguments, so it must be trivially copyable and at most kFunctorArgBytes.
//
// List 0 must be the parameter and list 1, when there is one, the gradient:
//  - when the caller asks for update norms (TensorLists::norms), for_each also
//    sums the squared change of list 0 and its squared value before the step,
//    so every functor gets them without a line of its own; see NOTE: [update
//    norms]. A functor that skips its update (AMP's found_inf) returns before
//    for_each, which leaves the norms at zero.
//  - with master weights (Storage<float, G>, NOTE: [master weights]), list 1
//    holds G, and for_each writes list 0 rounded to G into the param copies.
//  - with a rounding seed, bfloat16 stores of the parameter (list 0, or its
//    copy) round stochastically; see NOTE: [rounding stream] in common/philox.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/philox.h"
#include "common/storage.h"
#include "cuda/kernels/dtype.h"
#include "cuda/kernels/vec_memory.cuh"

namespace fastopt::cuda {

// Elements one block processes in one go. Large enough to amortise the
// per-chunk work (finding the tensor, reading its scalars), small enough that
// a step over a few large tensors still spreads across every SM.
constexpr int64_t kChunkSize = 65536;
constexpr int kBlockSize = 512;
constexpr int kWarpSize = 32;
static_assert(kBlockSize % kWarpSize == 0 && kBlockSize / kWarpSize <= kWarpSize,
              "the update-norm reduction sums one value per warp in a single warp");
static_assert(kChunkSize % 4 == 0, "a chunk starts a group of 4 of NOTE: [rounding stream]");
// gridDim.x limit; larger launches make each block take several chunks.
constexpr int64_t kMaxGridSize = 2147483647;

// NOTE: [kernel argument budget]
// Kernel arguments are limited to 4 KB, or to 32 KB (32764 bytes) on Volta
// and newer when both the toolkit that built the kernel and the driver are
// CUDA 12.1 or later. The toolkit is known at compile time, the driver only at
// run time (minor-version compatibility lets a 12.1 build run on a 12.0
// driver), so with a 12.1+ toolkit every functor is built for both budgets
// and large_kernel_args() picks one per launch, as ATen's MultiTensorApply
// does (its NOTE: [32KB kernel argument size support]).
//
// The driver spends the budget on per-tensor entries only: there is no
// per-block table mapping blocks to tensors, because a block finds the tensor
// of its chunk by binary search over the tensors' cumulative chunk counts. So a
// launch covers up to TensorListMeta::kCapacity tensors of any size, and more
// tensors take more launches. kFunctorArgBytes is reserved for the functor,
// checked by a static_assert at each launch.
//
// Per tensor the metadata holds LISTS list pointers (the functor's lists,
// plus the param copies with master weights), numel, the step pointer,
// chunk_end and the tensor's int32 index in the call: (LISTS + 3) * 8 + 4
// bytes. Per launch that is, with 4 KB / 32 KB:
//   LISTS 2: 86 / 738 tensors, 4: 63 / 541, 5: 56 / 477, 6: 50 / 427.
// So with 32 KB, a step over 400 single-tensor param groups of any fastopt
// optimizer is one launch. The static_asserts in multi_tensor_apply() keep
// these figures honest.
constexpr int kSmallKernelArgBytes = 4096;
constexpr int kLargeKernelArgBytes = 32764;
constexpr int kFunctorArgBytes = 256;

// The large kernels exist when the toolkit can build them and every
// architecture of this build is Volta or newer: nvcc lists the architectures
// in ascending order in __CUDA_ARCH_LIST__ (e.g. 800,900), so its head decides.
#define FASTOPT_ARCH_LIST_HEAD_IMPL(first, ...) first
#define FASTOPT_ARCH_LIST_HEAD(...) FASTOPT_ARCH_LIST_HEAD_IMPL(__VA_ARGS__)
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12010 && defined(__CUDA_ARCH_LIST__) && \
    FASTOPT_ARCH_LIST_HEAD(__CUDA_ARCH_LIST__) >= 700
#define FASTOPT_LARGE_KERNEL_ARGS 1
#else
#define FASTOPT_LARGE_KERNEL_ARGS 0
#endif

// Whether launches on the current device may take kLargeKernelArgBytes of
// arguments; see NOTE: [kernel argument budget].
inline bool large_kernel_args() {
#if FASTOPT_LARGE_KERNEL_ARGS
  static const bool driver_supports = [] {
    int version = 0;
    return cudaDriverGetVersion(&version) == cudaSuccess && version >= 12010;
  }();
  int device = 0;
  int major = 0;
  return driver_supports && cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         major >= 7;
#else
  return false;
#endif
}

// The element types of one call's lists (Storage, common/storage.h): V for
// list 0 (the parameter, or its float32 master) and the state lists, G for
// list 1 (the gradient).
//
// NOTE: [master weights]
// With G != V the call has master weights: V is float, the lists are float32
// masters and float32 state, the gradients keep the model's 16-bit dtype G,
// and each updated master is also written, rounded to G, to the parameter
// copy in the same pass (TensorLists::copies). The CPU kernels use the same
// Storage.

// The arithmetic type of a storage type or of a Storage<V, G>.
template <typename S>
struct StorageOpmath {
  using type = opmath_t<typename as_storage_t<S>::value_t>;
  static_assert(std::is_same_v<type, opmath_t<typename as_storage_t<S>::grad_t>>,
                "one arithmetic type per call");
};
template <typename S>
using storage_opmath_t = typename StorageOpmath<S>::type;

// The list that holds gradients, of Storage::grad_t.
constexpr int kGradList = 1;

// Pointer arrays per tensor in the kernel arguments: the functor's lists,
// then the param copies with master weights.
template <typename Functor>
constexpr int kNumLists = Functor::kDepth + as_storage_t<typename Functor::storage_t>::kCopies;

template <int LISTS, int ARG_BYTES>
struct TensorListMeta {
  // norms, rounding_seed, num_tensors and the padding after the int32 array.
  static constexpr int kFixedBytes = 8 + 8 + 8 + 4;
  static constexpr int kBytesPerTensor = (LISTS + 3) * 8 + 4;
  static constexpr int kCapacity = (ARG_BYTES - kFunctorArgBytes - kFixedBytes) / kBytesPerTensor;

  void* ptrs[LISTS][kCapacity];
  int64_t numels[kCapacity];
  float* steps[kCapacity];
  // Chunks of tensors 0..i together: chunk c belongs to the first i with c < chunk_end[i].
  int64_t chunk_end[kCapacity];
  // Device pointer to the call's zeroed [num_tensors, 2] update-norm rows, or
  // null when not wanted; row index[i] is tensor i's.
  double* norms;
  // Device pointer to the two int64 words of NOTE: [rounding stream], or null
  // for round-to-nearest.
  const int64_t* rounding_seed;
  // The tensor's index in the call (tensors without elements are skipped, so
  // it can differ from i): its update-norm row, its row of a hyperparameter
  // table, its part of the rounding stream.
  int32_t index[kCapacity];
  int num_tensors;
};

// NOTE: [update norms]
// FusedOptimizer.update_ratios() needs, per tensor, sum (p_new - p_old)^2 and
// sum p_old^2. for_each computes them from the registers it already holds, in
// no extra pass over memory, for every functor (the CPU counterpart is
// for_each_element in csrc/cpu/kernels/elementwise.h, with the same
// definition: p_new is the parameter as stored, i.e. rounded to the storage
// type, so that for 16-bit parameters the ratio shows the update that really
// landed, and an update swallowed by rounding shows as zero; with master
// weights list 0 is the float32 master).
//  - Off costs nothing: for_each tests the row pointer once per chunk (it is
//    block-uniform) and runs one of two instantiations of its loop, and the
//    one without norms has no accumulation and no barrier. Moreover the driver
//    launches a separate kernel instantiation when norms are off, in which the
//    row pointer is a constant null, so the norm code is compiled out of it
//    entirely and cannot raise its register count.
//  - Each thread sums its elements in opmath_t<T>: float for float, half and
//    bfloat16, double for double. A thread sees at most kChunkSize/kBlockSize
//    = 128 elements of a chunk, and a float sum of 128 non-negative terms is
//    within 127 float roundings (< 1e-5 relative) of the exact sum: ample for
//    a diagnostic ratio. Summing per element in double instead would put two
//    float->double conversions per element on the hot path, an instruction
//    that runs at 16 per clock per SM on sm_80/sm_90 (float FMA: 64 or 128).
//    Everything past the thread (warp, block, tensor) is summed in double.
//  - The block reduces the partials with warp shuffles and shared memory, and
//    thread 0 atomicAdds the block's two sums into the tensor's row (double
//    atomicAdd, sm_60+). The order of those additions depends on scheduling,
//    so the low bits of a multi-chunk tensor's sums may vary between runs.
//  - The caller zeroes the rows before the launch; tensors without elements,
//    which the driver skips, keep their zero row.
//
// Contract for functors (it is what makes the barrier legal): every thread of
// the block calls for_each, once per chunk, in block-uniform control flow.
// Early returns must be taken by the whole block (found_inf is read by every
// thread from the same address, so that one is).

// Sum of `x` over the 32 lanes of the calling warp, in lane 0. Every lane of
// the warp must call it.
__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x += __shfl_down_sync(0xffffffffu, x, offset);
  }
  return x;
}

// Adds the sums of every thread of the block to row[0] and row[1]. Every
// thread of the block must call it (it has barriers), and blockDim.x must be a
// multiple of kWarpSize, at most kBlockSize. See NOTE: [update norms].
__device__ __forceinline__ void add_block_sums(double* row, double update_sq, double param_sq) {
  __shared__ double warp_sums[kBlockSize / kWarpSize][2];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  update_sq = warp_sum(update_sq);
  param_sq = warp_sum(param_sq);
  if (lane == 0) {
    warp_sums[warp][0] = update_sq;
    warp_sums[warp][1] = param_sq;
  }
  __syncthreads();
  if (warp == 0) {
    const int num_warps = static_cast<int>(blockDim.x) / kWarpSize;
    update_sq = warp_sum(lane < num_warps ? warp_sums[lane][0] : 0.0);
    param_sq = warp_sum(lane < num_warps ? warp_sums[lane][1] : 0.0);
    if (lane == 0) {
      atomicAdd(row, update_sq);
      atomicAdd(row + 1, param_sq);
    }
  }
  // The block's next chunk writes warp_sums again.
  __syncthreads();
}

// The same chunk of each of a tensor's DEPTH lists.
template <typename S, int DEPTH>
struct Chunk {
  using St = as_storage_t<S>;
  using V = typename St::value_t;
  using G = typename St::grad_t;
  using M = storage_opmath_t<St>;

  void* ptrs[DEPTH];  // list d's elements (G for kGradList, else V), from the chunk's first one
  G* copy;            // with master weights, the param copy's elements; else null
  int64_t n;          // elements in the chunk, at most kChunkSize
  int64_t first;      // the chunk's first element's index within its tensor
  int tensor;         // the tensor's index in the call
  double* norms;      // the tensor's [update_sq, param_sq] row, or null when not wanted
  bool stochastic;    // round bfloat16 parameter stores from `key`'s stream
  DropoutKey key;     // NOTE: [rounding stream]; valid when `stochastic`

  // Calls op(v) once per element of the chunk, where v[d] is list d's element
  // as the arithmetic type, and stores v[d] back for the lists whose bit
  // (1u << d) is set in `written` (list 0 also to `copy` with master weights).
  // Storage is read and written with 16-byte vectors (of the widest list)
  // when every list of the chunk is aligned; see NOTE: [16-byte vector access].
  // With `norms`, also adds this chunk's update norms of list 0 to the row;
  // see NOTE: [update norms] for the contract this places on callers.
  template <typename Op>
  __device__ __forceinline__ void for_each(uint32_t written, Op&& op) const {
    // Block-uniform: every thread of the block holds the same chunk.
    if (norms != nullptr) {
      for_each_impl<true>(written, op);
    } else {
      for_each_impl<false>(written, op);
    }
  }

 private:
  // Elements per thread and access: one 16-byte vector of V, the widest type.
  static constexpr int kILP = kVecSize<V>;
  // Whether any store of this storage can round stochastically (bfloat16 only).
  static constexpr bool kRoundable =
      std::is_same_v<V, __nv_bfloat16> || (St::kCopies && std::is_same_v<G, __nv_bfloat16>);
  static_assert(!kRoundable || kILP % 4 == 0, "a vector covers whole groups of 4 words");

  template <bool kNorms, typename Op>
  __device__ __forceinline__ void for_each_impl(uint32_t written, Op& op) const {
    const bool sr = kRoundable && stochastic;
    M update_sq = M(0);  // this thread's sums; used only when kNorms
    M param_sq = M(0);
    int64_t begin = 0;  // the first element left to the element loop below
    if (all_aligned()) {
      const int64_t num_vecs = n / kILP;
      for (int64_t i = threadIdx.x; i < num_vecs; i += blockDim.x) {
        const int64_t base = i * kILP;
        M v[kILP][DEPTH];
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
          if (d == kGradList) {
            load_column<G>(d, base, v);
          } else {
            load_column<V>(d, base, v);
          }
        }
        [[maybe_unused]] M before[kILP];
#pragma unroll
        for (int e = 0; e < kILP; ++e) {
          before[e] = v[e][0];
          op(v[e]);
        }
        uint32_t words[kILP] = {};
        if constexpr (kRoundable) {
          if (sr) vector_words(first + base, words);
        }
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
          if (!(written & (1u << d))) continue;
          if (d == 0) {
            V r[kILP];
#pragma unroll
            for (int e = 0; e < kILP; ++e) {
              r[e] = round_to<V>(v[e][0], sr, words[e]);
              if constexpr (kNorms) add_norms(to_opmath(r[e]), before[e], update_sq, param_sq);
            }
            store_vec(static_cast<V*>(ptrs[0]) + base, r);
          } else if (d == kGradList) {
            store_column<G>(d, base, v);
          } else {
            store_column<V>(d, base, v);
          }
        }
        if constexpr (St::kCopies) {
          G r[kILP];
#pragma unroll
          for (int e = 0; e < kILP; ++e) r[e] = round_to<G>(v[e][0], sr, words[e]);
          store_vec(copy + base, r);
        }
      }
      begin = num_vecs * kILP;
    }
    // Misaligned chunks, and the last n % kILP elements of aligned ones. Each
    // thread still loads kILP elements per list before computing any, so as
    // many loads are in flight as on the vector path; consecutive threads read
    // consecutive elements, so the loads stay coalesced.
    const int64_t stride = static_cast<int64_t>(blockDim.x) * kILP;
    for (int64_t base = begin + threadIdx.x; base < n; base += stride) {
      M v[kILP][DEPTH];
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        const int64_t idx = base + static_cast<int64_t>(e) * blockDim.x;
        if (idx < n) {
#pragma unroll
          for (int d = 0; d < DEPTH; ++d) {
            v[e][d] = d == kGradList ? to_opmath(static_cast<const G*>(ptrs[d])[idx])
                                     : to_opmath(static_cast<const V*>(ptrs[d])[idx]);
          }
        }
      }
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        const int64_t idx = base + static_cast<int64_t>(e) * blockDim.x;
        if (idx >= n) continue;
        [[maybe_unused]] const M before = v[e][0];
        op(v[e]);
        uint32_t word = 0;
        if constexpr (kRoundable) {
          if (sr) word = element_word(first + idx);
        }
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
          if (!(written & (1u << d))) continue;
          if (d == 0) {
            const V r = round_to<V>(v[e][0], sr, word);
            if constexpr (kNorms) add_norms(to_opmath(r), before, update_sq, param_sq);
            static_cast<V*>(ptrs[0])[idx] = r;
          } else if (d == kGradList) {
            static_cast<G*>(ptrs[d])[idx] = from_opmath<G>(v[e][d]);
          } else {
            static_cast<V*>(ptrs[d])[idx] = from_opmath<V>(v[e][d]);
          }
        }
        if constexpr (St::kCopies) copy[idx] = round_to<G>(v[e][0], sr, word);
      }
    }
    if constexpr (kNorms) {
      add_block_sums(norms, static_cast<double>(update_sq), static_cast<double>(param_sq));
    }
  }

  // List d's elements [base, base + kILP) into column d of v, as T.
  template <typename T>
  __device__ __forceinline__ void load_column(int d, int64_t base, M (&v)[kILP][DEPTH]) const {
    T r[kILP];
    load_vec(r, static_cast<const T*>(ptrs[d]) + base);
#pragma unroll
    for (int e = 0; e < kILP; ++e) v[e][d] = to_opmath(r[e]);
  }

  template <typename T>
  __device__ __forceinline__ void store_column(int d, int64_t base, const M (&v)[kILP][DEPTH]) const {
    T r[kILP];
#pragma unroll
    for (int e = 0; e < kILP; ++e) r[e] = from_opmath<T>(v[e][d]);
    store_vec(static_cast<T*>(ptrs[d]) + base, r);
  }

  __device__ __forceinline__ bool all_aligned() const {
    bool aligned = true;
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
      aligned = aligned && (d == kGradList ? is_aligned<kILP>(static_cast<const G*>(ptrs[d]))
                                           : is_aligned<kILP>(static_cast<const V*>(ptrs[d])));
    }
    if constexpr (St::kCopies) aligned = aligned && is_aligned<kILP>(copy);
    return aligned;
  }

  // The rounding words of elements j .. j + kILP of the tensor; j % 4 == 0
  // (chunks start at multiples of kChunkSize, vectors at multiples of kILP).
  __device__ __forceinline__ void vector_words(int64_t j, uint32_t (&words)[kILP]) const {
#pragma unroll
    for (int q = 0; q < kILP / 4; ++q) {
      uint32_t quad_words[4];
      rounding_words(key, static_cast<uint32_t>(tensor), static_cast<uint64_t>(j / 4 + q),
                     quad_words);
#pragma unroll
      for (int w = 0; w < 4; ++w) words[4 * q + w] = quad_words[w];
    }
  }

  // The rounding word of element j of the tensor alone.
  __device__ __forceinline__ uint32_t element_word(int64_t j) const {
    uint32_t quad_words[4];
    rounding_words(key, static_cast<uint32_t>(tensor), static_cast<uint64_t>(j / 4), quad_words);
    return quad_words[j % 4];
  }

  // The change as stored: for 16-bit params, updates lost to rounding count as lost.
  __device__ __forceinline__ static void add_norms(M after, M before, M& update_sq, M& param_sq) {
    const M delta = after - before;
    update_sq = fma_op(delta, delta, update_sq);
    param_sq = fma_op(before, before, param_sq);
  }

  __device__ __forceinline__ static float fma_op(float a, float b, float c) {
    return __fmaf_rn(a, b, c);
  }
  __device__ __forceinline__ static double fma_op(double a, double b, double c) {
    return __fma_rn(a, b, c);
  }
};

// The tensor that chunk c belongs to. Every thread of a block asks for the
// same c, so the reads of the kernel-argument array are broadcasts.
template <typename Meta>
__device__ __forceinline__ int find_tensor(const Meta& meta, int64_t c) {
  int lo = 0;
  int hi = meta.num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (c < meta.chunk_end[mid]) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// kNorms: whether the launch wants update norms. In the kernel without them
// chunk.norms is a constant null, so the compiler drops for_each's norm code
// and the kernel's register allocation is that of a driver without the
// feature; see NOTE: [update norms].
template <typename Functor, bool kNorms, int ARG_BYTES>
__global__ void __launch_bounds__(kBlockSize)
    multi_tensor_apply_kernel(const TensorListMeta<kNumLists<Functor>, ARG_BYTES> meta,
                              const Functor functor) {
  using St = as_storage_t<typename Functor::storage_t>;
  using V = typename St::value_t;
  using G = typename St::grad_t;
  constexpr int kDepth = Functor::kDepth;
  Chunk<typename Functor::storage_t, kDepth> chunk;
  chunk.stochastic = meta.rounding_seed != nullptr;
  // Read by every thread from one address: a broadcast, once per block.
  chunk.key = chunk.stochastic ? dropout_key(meta.rounding_seed) : DropoutKey{0, 0, 0, 0};
  const int64_t num_chunks = meta.chunk_end[meta.num_tensors - 1];
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const int t = find_tensor(meta, c);
    const int64_t chunk_begin = t == 0 ? 0 : meta.chunk_end[t - 1];
    const int64_t offset = (c - chunk_begin) * kChunkSize;
    const int64_t left = meta.numels[t] - offset;
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      chunk.ptrs[d] = d == kGradList ? static_cast<void*>(static_cast<G*>(meta.ptrs[d][t]) + offset)
                                     : static_cast<void*>(static_cast<V*>(meta.ptrs[d][t]) + offset);
    }
    chunk.copy = St::kCopies ? static_cast<G*>(meta.ptrs[kNumLists<Functor> - 1][t]) + offset
                             : nullptr;
    chunk.n = left < kChunkSize ? left : kChunkSize;
    chunk.first = offset;
    chunk.tensor = meta.index[t];
    chunk.norms = kNorms ? meta.norms + 2 * static_cast<int64_t>(chunk.tensor) : nullptr;
    functor(chunk, meta.steps[t]);
  }
}

// Host-side description of the tensors of one call: one entry per tensor.
template <int DEPTH>
struct TensorLists {
  void* const* ptrs[DEPTH];  // ptrs[d][i]: device pointer to list d's tensor i
  // With master weights (NOTE: [master weights]): device pointers to the
  // 16-bit param copies that receive list 0 rounded; null otherwise.
  void* const* copies;
  const int64_t* numels;
  float* const* steps;  // per-tensor step counters on the device, or null for none
  // Device pointer to a zeroed float64 [num_tensors, 2] array, or null. When
  // set, row i receives tensor i's [sum (p_new - p_old)^2, sum p_old^2] of list
  // 0; see NOTE: [update norms]. Rows of tensors without elements stay zero.
  double* norms;
  // Device pointer to two int64 words (NOTE: [rounding stream]), or null:
  // bfloat16 stores of list 0 (or of the copies) then round stochastically.
  const int64_t* rounding_seed;
  int64_t num_tensors;
};

// TensorLists over the first DEPTH of a launch's N per-list pointer arrays
// (an optimizer passes fewer lists when optional state is absent), without
// copies or stochastic rounding.
template <int DEPTH, int N>
TensorLists<DEPTH> make_tensor_lists(void* const* const (&lists)[N], const int64_t* numels,
                                     float* const* steps, double* norms, int64_t num_tensors) {
  static_assert(DEPTH <= N, "a launch has N lists");
  TensorLists<DEPTH> out{};
  for (int d = 0; d < DEPTH; ++d) out.ptrs[d] = lists[d];
  out.numels = numels;
  out.steps = steps;
  out.norms = norms;
  out.num_tensors = num_tensors;
  return out;
}

// multi_tensor_apply with a kernel-argument budget of ARG_BYTES.
template <int ARG_BYTES, typename Functor>
void multi_tensor_apply_with(const TensorLists<Functor::kDepth>& lists, const Functor& functor,
                             cudaStream_t stream) {
  constexpr int kDepth = Functor::kDepth;
  constexpr bool kCopies = as_storage_t<typename Functor::storage_t>::kCopies;
  using Meta = TensorListMeta<kNumLists<Functor>, ARG_BYTES>;
  static_assert(sizeof(Functor) <= kFunctorArgBytes, "see NOTE: [kernel argument budget]");
  static_assert(sizeof(Meta) + kFunctorArgBytes <= ARG_BYTES,
                "see NOTE: [kernel argument budget]");

  Meta meta{};
  meta.norms = lists.norms;
  meta.rounding_seed = lists.rounding_seed;
  auto launch = [&] {
    const int64_t num_chunks = meta.chunk_end[meta.num_tensors - 1];
    const auto grid = static_cast<unsigned>(num_chunks < kMaxGridSize ? num_chunks : kMaxGridSize);
    if (lists.norms != nullptr) {
      multi_tensor_apply_kernel<Functor, true, ARG_BYTES><<<grid, kBlockSize, 0, stream>>>(meta, functor);
    } else {
      multi_tensor_apply_kernel<Functor, false, ARG_BYTES><<<grid, kBlockSize, 0, stream>>>(meta, functor);
    }
    meta.num_tensors = 0;
  };
  for (int64_t i = 0; i < lists.num_tensors; ++i) {
    const int64_t numel = lists.numels[i];
    if (numel == 0) continue;
    const int k = meta.num_tensors++;
    for (int d = 0; d < kDepth; ++d) meta.ptrs[d][k] = lists.ptrs[d][i];
    if constexpr (kCopies) meta.ptrs[kDepth][k] = lists.copies[i];
    meta.numels[k] = numel;
    meta.steps[k] = lists.steps == nullptr ? nullptr : lists.steps[i];
    meta.index[k] = static_cast<int32_t>(i);
    const int64_t chunks_before = k == 0 ? 0 : meta.chunk_end[k - 1];
    meta.chunk_end[k] = chunks_before + (numel + kChunkSize - 1) / kChunkSize;
    if (meta.num_tensors == Meta::kCapacity) launch();
  }
  if (meta.num_tensors > 0) launch();
}

// Enqueues `functor` over every element of `lists` on `stream`, in as many
// launches as NOTE: [kernel argument budget] requires. Tensors without
// elements are skipped. Enqueues only kernels: no synchronisation, no
// allocation, so it can be captured in a CUDA graph. Launch errors are left to
// the caller's cudaGetLastError.
template <typename Functor>
void multi_tensor_apply(const TensorLists<Functor::kDepth>& lists, const Functor& functor,
                        cudaStream_t stream) {
#if FASTOPT_LARGE_KERNEL_ARGS
  if (large_kernel_args()) {
    multi_tensor_apply_with<kLargeKernelArgBytes>(lists, functor, stream);
    return;
  }
#endif
  multi_tensor_apply_with<kSmallKernelArgBytes>(lists, functor, stream);
}

// NOTE: [step counters]
// Optimizers with bias correction (Adam, Adagrad, ...) keep one float32 step
// counter per tensor on the device, and every block of the update reads it.
// Incrementing it inside the update would race with the other blocks of the
// same tensor, so it is a launch of its own, enqueued before the update. Like
// the update it does nothing when *found_inf != 0 (AMP skipped the step).
//
// The kernel is a template, though only float is used, because a kernel
// defined in a header must be a template (nvcc ignores `inline` on kernels).
template <typename S>
struct StepList {
  static constexpr int kCapacity =
      (kSmallKernelArgBytes - kFunctorArgBytes) / static_cast<int>(sizeof(S*));
  S* ptrs[kCapacity];
  int num;
};

template <typename S>
__global__ void increment_steps_kernel(const StepList<S> steps, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.f) return;
  if (static_cast<int>(threadIdx.x) < steps.num) *steps.ptrs[threadIdx.x] += S(1);
}

// Adds one to each of `steps[0..n)` (device scalars) unless *found_inf != 0.
template <typename S>
void increment_steps(S* const* steps, int64_t n, const float* found_inf, cudaStream_t stream) {
  static_assert(StepList<S>::kCapacity <= 1024, "one thread per counter, in one block");
  StepList<S> list{};
  for (int64_t begin = 0; begin < n; begin += StepList<S>::kCapacity) {
    const int64_t left = n - begin;
    list.num = static_cast<int>(left < StepList<S>::kCapacity ? left : StepList<S>::kCapacity);
    for (int i = 0; i < list.num; ++i) list.ptrs[i] = steps[begin + i];
    increment_steps_kernel<S><<<1, list.num, 0, stream>>>(list, found_inf);
  }
}

}  // namespace fastopt::cuda
