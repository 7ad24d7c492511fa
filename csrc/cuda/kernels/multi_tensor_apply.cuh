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
//     using storage_t = float;           // element type of every list
//     static constexpr int kDepth = 3;   // lists per tensor: param, grad, state...
//     __device__ void operator()(const Chunk<storage_t, kDepth>& chunk, const float* step) const;
//   };
//
// called once per chunk with that chunk of every list, and the tensor's step
// counter (null when the caller passes none). It reads its per-tensor scalars
// and then runs its element-wise math with chunk.for_each, which does the loads
// and stores. Plain data in the functor (hyperparameters, device pointers to
// lr or grad_scale) travels in the kernel arguments, so it must be trivially
// copyable and at most kFunctorArgBytes.
//
// List 0 must be the parameter: when the caller asks for update norms
// (TensorLists::norms), for_each also sums the squared change of list 0 and its
// squared value before the step, so every functor gets them without a line of
// its own; see NOTE: [update norms]. A functor that skips its update (AMP's
// found_inf) returns before for_each, which leaves the norms at zero.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

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
// gridDim.x limit; larger launches make each block take several chunks.
constexpr int64_t kMaxGridSize = 2147483647;

// NOTE: [kernel argument budget]
// Kernel arguments are limited to 4 KB. (CUDA 12.1 raised this to 32 KB on
// Volta and newer, but only under a 12.1+ driver; fastopt keeps the portable
// limit.) The driver spends the budget on per-tensor entries only: there is no
// per-block table mapping blocks to tensors, because a block finds the tensor
// of its chunk by binary search over the tensors' cumulative chunk counts. So a
// launch covers up to TensorListMeta<DEPTH>::kCapacity tensors of any size, and
// more tensors take more launches. kFunctorArgBytes is reserved for the
// functor, checked by a static_assert at each launch.
//
// Per tensor the metadata holds DEPTH list pointers, numel, the step pointer,
// the update-norm row pointer and chunk_end: (DEPTH + 4) * 8 bytes. With
// 4096 - 256 - 8 (num_tensors, padded) = 3832 bytes that is, per launch,
//   DEPTH 2: 79 tensors, DEPTH 3: 68, DEPTH 4: 59, DEPTH 5: 53.
// The static_asserts in multi_tensor_apply() keep these figures honest.
constexpr int kKernelArgBytes = 4096;
constexpr int kFunctorArgBytes = 256;

template <int DEPTH>
struct TensorListMeta {
  // Per tensor: DEPTH list pointers, numel, step pointer, norms row, chunk_end.
  static constexpr int kBytesPerTensor = (DEPTH + 4) * 8;
  static constexpr int kCapacity =
      (kKernelArgBytes - kFunctorArgBytes - static_cast<int>(sizeof(int64_t))) / kBytesPerTensor;

  void* ptrs[DEPTH][kCapacity];
  int64_t numels[kCapacity];
  float* steps[kCapacity];
  double* norms[kCapacity];  // the tensor's update-norm row, or null when not wanted
  // Chunks of tensors 0..i together: chunk c belongs to the first i with c < chunk_end[i].
  int64_t chunk_end[kCapacity];
  int num_tensors;
};

// NOTE: [update norms]
// FusedOptimizer.update_ratios() needs, per tensor, sum (p_new - p_old)^2 and
// sum p_old^2. for_each computes them from the registers it already holds, in
// no extra pass over memory, for every functor (the CPU counterpart is
// for_each_element in csrc/cpu/kernels/elementwise.h, with the same
// definition: p_new is the parameter as stored, i.e. rounded to the storage
// type, so that for 16-bit parameters the ratio shows the update that really
// landed, and an update swallowed by rounding shows as zero).
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
template <typename T, int DEPTH>
struct Chunk {
  T* ptrs[DEPTH];  // list d's elements, from the chunk's first one
  int64_t n;       // elements in the chunk, at most kChunkSize
  double* norms;   // the tensor's [update_sq, param_sq] row, or null when not wanted

  // Calls op(v) once per element of the chunk, where v[d] is list d's element
  // as opmath_t<T>, and stores v[d] back for the lists whose bit (1u << d) is
  // set in `written`. Storage is read and written with 16-byte vectors when
  // every list of the chunk is aligned; see NOTE: [16-byte vector access].
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
  using M = opmath_t<T>;

  template <bool kNorms, typename Op>
  __device__ __forceinline__ void for_each_impl(uint32_t written, Op& op) const {
    constexpr int kILP = kVecSize<T>;
    M update_sq = M(0);  // this thread's sums; used only when kNorms
    M param_sq = M(0);
    int64_t begin = 0;  // the first element left to the element loop below
    if (all_aligned()) {
      const int64_t num_vecs = n / kILP;
      for (int64_t i = threadIdx.x; i < num_vecs; i += blockDim.x) {
        T r[DEPTH][kILP];
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) load_vec(r[d], ptrs[d] + i * kILP);
#pragma unroll
        for (int e = 0; e < kILP; ++e) apply<kNorms>(r, e, written, op, update_sq, param_sq);
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
          if (written & (1u << d)) store_vec(ptrs[d] + i * kILP, r[d]);
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
      T r[DEPTH][kILP];
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        const int64_t idx = base + static_cast<int64_t>(e) * blockDim.x;
        if (idx < n) {
#pragma unroll
          for (int d = 0; d < DEPTH; ++d) r[d][e] = ptrs[d][idx];
        }
      }
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        const int64_t idx = base + static_cast<int64_t>(e) * blockDim.x;
        if (idx < n) {
          apply<kNorms>(r, e, written, op, update_sq, param_sq);
#pragma unroll
          for (int d = 0; d < DEPTH; ++d) {
            if (written & (1u << d)) ptrs[d][idx] = r[d][e];
          }
        }
      }
    }
    if constexpr (kNorms) {
      add_block_sums(norms, static_cast<double>(update_sq), static_cast<double>(param_sq));
    }
  }

  __device__ __forceinline__ bool all_aligned() const {
    bool aligned = true;
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) aligned = aligned && is_aligned(ptrs[d]);
    return aligned;
  }

  template <bool kNorms, typename Op>
  __device__ __forceinline__ static void apply(T (&r)[DEPTH][kVecSize<T>], int e, uint32_t written,
                                               Op& op, M& update_sq, M& param_sq) {
    M v[DEPTH];
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) v[d] = to_opmath(r[d][e]);
    [[maybe_unused]] const M before = v[0];
    op(v);
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
      if (written & (1u << d)) r[d][e] = from_opmath<T>(v[d]);
    }
    if constexpr (kNorms) {
      // The change as stored: for 16-bit params, updates lost to rounding count as lost.
      const M delta = to_opmath(r[0][e]) - before;
      update_sq = fma_op(delta, delta, update_sq);
      param_sq = fma_op(before, before, param_sq);
    }
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
template <int DEPTH>
__device__ __forceinline__ int find_tensor(const TensorListMeta<DEPTH>& meta, int64_t c) {
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
template <typename Functor, bool kNorms>
__global__ void __launch_bounds__(kBlockSize)
    multi_tensor_apply_kernel(const TensorListMeta<Functor::kDepth> meta, const Functor functor) {
  using T = typename Functor::storage_t;
  const int64_t num_chunks = meta.chunk_end[meta.num_tensors - 1];
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const int t = find_tensor(meta, c);
    const int64_t first = t == 0 ? 0 : meta.chunk_end[t - 1];
    const int64_t offset = (c - first) * kChunkSize;
    const int64_t left = meta.numels[t] - offset;
    Chunk<T, Functor::kDepth> chunk;
#pragma unroll
    for (int d = 0; d < Functor::kDepth; ++d) chunk.ptrs[d] = static_cast<T*>(meta.ptrs[d][t]) + offset;
    chunk.n = left < kChunkSize ? left : kChunkSize;
    chunk.norms = kNorms ? meta.norms[t] : nullptr;
    functor(chunk, meta.steps[t]);
  }
}

// Host-side description of the tensors of one call: one entry per tensor.
template <int DEPTH>
struct TensorLists {
  void* const* ptrs[DEPTH];  // ptrs[d][i]: device pointer to list d's tensor i
  const int64_t* numels;
  float* const* steps;  // per-tensor step counters on the device, or null for none
  // Device pointer to a zeroed float64 [num_tensors, 2] array, or null. When
  // set, row i receives tensor i's [sum (p_new - p_old)^2, sum p_old^2] of list
  // 0; see NOTE: [update norms]. Rows of tensors without elements stay zero.
  double* norms;
  int64_t num_tensors;
};

// TensorLists over the first DEPTH of a launch's N per-list pointer arrays
// (an optimizer passes fewer lists when optional state is absent).
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

template <typename T>
struct StorageType {
  using type = T;
};

// Calls fn(StorageType<T>{}) with the storage type T of `dtype`.
template <typename Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: return fn(StorageType<float>{});
    case DType::Float64: return fn(StorageType<double>{});
    case DType::Float16: return fn(StorageType<__half>{});
    case DType::BFloat16: return fn(StorageType<__nv_bfloat16>{});
  }
}

// Enqueues `functor` over every element of `lists` on `stream`, in as many
// launches as NOTE: [kernel argument budget] requires. Tensors without
// elements are skipped. Enqueues only kernels: no synchronisation, no
// allocation, so it can be captured in a CUDA graph. Launch errors are left to
// the caller's cudaGetLastError.
template <typename Functor>
void multi_tensor_apply(const TensorLists<Functor::kDepth>& lists, const Functor& functor,
                        cudaStream_t stream) {
  constexpr int kDepth = Functor::kDepth;
  using Meta = TensorListMeta<kDepth>;
  static_assert(sizeof(Functor) <= kFunctorArgBytes, "see NOTE: [kernel argument budget]");
  static_assert(sizeof(Meta) + kFunctorArgBytes <= kKernelArgBytes,
                "see NOTE: [kernel argument budget]");

  Meta meta{};
  auto launch = [&] {
    const int64_t num_chunks = meta.chunk_end[meta.num_tensors - 1];
    const auto grid = static_cast<unsigned>(num_chunks < kMaxGridSize ? num_chunks : kMaxGridSize);
    if (lists.norms != nullptr) {
      multi_tensor_apply_kernel<Functor, true><<<grid, kBlockSize, 0, stream>>>(meta, functor);
    } else {
      multi_tensor_apply_kernel<Functor, false><<<grid, kBlockSize, 0, stream>>>(meta, functor);
    }
    meta.num_tensors = 0;
  };
  for (int64_t i = 0; i < lists.num_tensors; ++i) {
    const int64_t numel = lists.numels[i];
    if (numel == 0) continue;
    const int k = meta.num_tensors++;
    for (int d = 0; d < kDepth; ++d) meta.ptrs[d][k] = lists.ptrs[d][i];
    meta.numels[k] = numel;
    meta.steps[k] = lists.steps == nullptr ? nullptr : lists.steps[i];
    meta.norms[k] = lists.norms == nullptr ? nullptr : lists.norms + 2 * i;
    const int64_t chunks_before = k == 0 ? 0 : meta.chunk_end[k - 1];
    meta.chunk_end[k] = chunks_before + (numel + kChunkSize - 1) / kChunkSize;
    if (meta.num_tensors == Meta::kCapacity) launch();
  }
  if (meta.num_tensors > 0) launch();
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
      (kKernelArgBytes - kFunctorArgBytes) / static_cast<int>(sizeof(S*));
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
