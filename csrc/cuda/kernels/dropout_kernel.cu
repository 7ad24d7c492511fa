// CUDA dropout kernels on the Philox stream of common/philox.h.
//
// Element-wise dropout: one thread per Philox lane. A lane's counter is its
// global index, and its 4 output words are the mask of 4 elements 16 apart
// (NOTE: [dropout stream]), so each Philox call is used in full and a warp's
// accesses for one word cover two runs of 16 consecutive elements. The
// random words never leave registers. Channel-wise dropout (group > 1) runs
// one thread per element, each computing its channel's word.
#include "cuda/kernels/dropout_kernel.h"

#include "common/philox.h"
#include "cuda/kernels/vec_memory.cuh"

namespace fastopt::cuda {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU several times over; larger inputs
// are covered by the grid-stride loops.
constexpr int64_t kMaxBlocks = 1 << 16;

template <typename T>
struct DropoutArgs {
  const T* x;
  const T* bias;
  const T* residual;
  T* out;
  int64_t numel;
  int64_t group;
  int64_t bias_numel;
  const int64_t* seed;
  uint32_t threshold;
  bool drop_all;
  opmath_t<T> keep_prob;

  // Element i with keep multiplier m (exactly 1 or 0, see the CPU kernel).
  __device__ __forceinline__ void apply(int64_t i, opmath_t<T> m) const {
    opmath_t<T> v = to_opmath(x[i]);
    if (bias != nullptr) v += to_opmath(bias[i % bias_numel]);
    v = v * m / keep_prob;
    if (residual != nullptr) v += to_opmath(residual[i]);
    out[i] = from_opmath<T>(v);
  }

  __device__ __forceinline__ opmath_t<T> multiplier(uint32_t word) const {
    return (!drop_all && word >= threshold) ? opmath_t<T>(1) : opmath_t<T>(0);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) dropout_lanes_kernel(DropoutArgs<T> a) {
  const DropoutKey key = dropout_key(a.seed);
  const int64_t lanes = (a.numel + kDropoutBlock - 1) / kDropoutBlock * kDropoutLanes;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; lane < lanes;
       lane += stride) {
    const uint64_t counter = static_cast<uint64_t>(lane);
    uint32_t c[4] = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), key.o0,
                     key.o1};
    philox4x32_10(c, key.k0, key.k1);
    const int64_t first = lane / kDropoutLanes * kDropoutBlock + lane % kDropoutLanes;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = first + w * kDropoutLanes;
      if (i < a.numel) a.apply(i, a.multiplier(c[w]));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dropout_group_kernel(DropoutArgs<T> a) {
  const DropoutKey key = dropout_key(a.seed);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.numel;
       i += stride) {
    a.apply(i, a.multiplier(dropout_word(key, static_cast<uint64_t>(i / a.group))));
  }
}

int blocks_for(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

template <typename T>
void launch_typed(const DropoutLaunch& l, cudaStream_t stream) {
  const DropoutArgs<T> a{static_cast<const T*>(l.x),
                         static_cast<const T*>(l.bias),
                         static_cast<const T*>(l.residual),
                         static_cast<T*>(l.out),
                         l.numel,
                         l.group,
                         l.bias_numel,
                         l.seed,
                         l.threshold,
                         l.drop_all,
                         static_cast<opmath_t<T>>(l.keep_prob)};
  if (l.group == 1) {
    const int64_t lanes = (l.numel + kDropoutBlock - 1) / kDropoutBlock * kDropoutLanes;
    dropout_lanes_kernel<T><<<blocks_for(lanes), kThreads, 0, stream>>>(a);
  } else {
    dropout_group_kernel<T><<<blocks_for(l.numel), kThreads, 0, stream>>>(a);
  }
}

}  // namespace

void launch_dropout(const DropoutLaunch& l, cudaStream_t stream) {
  if (l.numel == 0) return;
  switch (l.dtype) {
    case DType::Float32:
      return launch_typed<float>(l, stream);
    case DType::Float64:
      return launch_typed<double>(l, stream);
    case DType::Float16:
      return launch_typed<__half>(l, stream);
    case DType::BFloat16:
      return launch_typed<__nv_bfloat16>(l, stream);
  }
}

}  // namespace fastopt::cuda
