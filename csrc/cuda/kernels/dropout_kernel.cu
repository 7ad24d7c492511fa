// CUDA dropout kernels on the CUDA layout of the Philox stream (NOTE:
// [dropout stream] in common/philox.h).
//
// Element-wise dropout: one thread per Philox lane. A lane's counter is its
// global index, and its 4 output words are the mask of 4 elements 16 apart
// (NOTE: [dropout stream]), so each Philox call is used in full and a warp's
// accesses for one word cover two runs of 16 consecutive elements. The
// random words never leave registers. Channel-wise dropout (group > 1) goes
// by tiles of consecutive elements: the block computes the word of each
// channel the tile touches once, into shared memory, and every element reads
// its channel's word there. The 1-bit mask mode writes the mask with warp
// ballots, or applies a stored one.
#include "cuda/kernels/dropout_kernel.h"

#include "common/philox.h"
#include "cuda/kernels/vec_memory.cuh"

namespace fastopt::cuda {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU several times over; larger inputs
// are covered by the grid-stride loops.
constexpr int64_t kMaxBlocks = 1 << 16;
// Channel-wise dropout: elements per tile (4 per thread), and the most
// channels such a tile can touch, group >= 2 being the case of that kernel:
// kGroupTile consecutive elements span at most (kGroupTile + group - 2) / group + 1.
constexpr int kGroupTile = 4 * kThreads;
constexpr int kGroupTileChannels = kGroupTile / 2 + 1;

template <typename T>
struct DropoutArgs {
  const T* x;
  const T* bias;
  const T* residual;
  T* out;
  uint8_t* bits_out;
  const uint8_t* bits_in;
  int64_t numel;
  int64_t group;
  int64_t bias_numel;
  const int64_t* seed;
  uint32_t threshold;
  bool drop_all;
  opmath_t<T> keep_prob;

  // What element i reads: the value to drop, x (+ bias), and the residual
  // (0 when there is none; store adds it only when there is one).
  struct Loaded {
    opmath_t<T> value;
    opmath_t<T> residual;
  };
  __device__ __forceinline__ Loaded load(int64_t i) const {
    opmath_t<T> v = to_opmath(x[i]);
    if (bias != nullptr) v += to_opmath(bias[i % bias_numel]);
    return {v, residual != nullptr ? to_opmath(residual[i]) : opmath_t<T>(0)};
  }
  // Element i from what load(i) read, with keep multiplier m (exactly 1 or
  // 0, see the CPU kernel).
  __device__ __forceinline__ void store(int64_t i, const Loaded& in, opmath_t<T> m) const {
    opmath_t<T> v = in.value * m / keep_prob;
    if (residual != nullptr) v += in.residual;
    out[i] = from_opmath<T>(v);
  }
  __device__ __forceinline__ void apply(int64_t i, opmath_t<T> m) const { store(i, load(i), m); }

  __device__ __forceinline__ opmath_t<T> multiplier(uint32_t word) const {
    return (!drop_all && word >= threshold) ? opmath_t<T>(1) : opmath_t<T>(0);
  }
};

// The loop runs warp-uniformly (a warp's 32 lanes start at a multiple of 32
// and stay together, `valid` marking lanes past the end), so that with
// bits_out every lane of the warp takes part in the ballot.
template <typename T>
__global__ void __launch_bounds__(kThreads) dropout_lanes_kernel(DropoutArgs<T> a) {
  const DropoutKey key = dropout_key(a.seed);
  const int64_t lanes = (a.numel + kDropoutBlock - 1) / kDropoutBlock * kDropoutLanes;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int warp_lane = static_cast<int>(threadIdx.x % 32);
  for (int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       lane - warp_lane < lanes; lane += stride) {
    const bool valid = lane < lanes;
    const int64_t first = lane / kDropoutLanes * kDropoutBlock + lane % kDropoutLanes;
    // NOTE: [dropout loads in flight] All four elements are loaded before
    // the Philox rounds and the first store. Interleaved (load, compute,
    // store per element), a thread had one load in flight, since a store to
    // `out` may alias the next load (in-place dropout); that is about 8 KB
    // per SM at full occupancy, and the H100 report of 2026-11-24 had the
    // forward at 57% of the triad. Four loads per thread quadruple it, and
    // the Philox rounds run while they are outstanding. Loading everything
    // first stays correct in place: each element is read before it is written.
    typename DropoutArgs<T>::Loaded in[4] = {};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = first + w * kDropoutLanes;
      if (valid && i < a.numel) in[w] = a.load(i);
    }
    const uint64_t counter = static_cast<uint64_t>(lane);
    uint32_t c[4] = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), key.o0,
                     key.o1};
    philox4x32_10(c, key.k0, key.k1);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = first + w * kDropoutLanes;
      const opmath_t<T> m = a.multiplier(c[w]);
      if (valid && i < a.numel) a.store(i, in[w], m);
      if (a.bits_out != nullptr) {
        // Each half-warp is one Philox block: its 16 votes for word w are the
        // mask of the block's elements 16w .. 16w + 15, two bytes.
        const unsigned votes = __ballot_sync(0xffffffffu, valid && m != opmath_t<T>(0));
        if (valid && lane % kDropoutLanes == 0) {
          const int64_t block = lane / kDropoutLanes;
          reinterpret_cast<uint16_t*>(a.bits_out)[block * 4 + w] =
              static_cast<uint16_t>(votes >> (warp_lane & 16));
        }
      }
    }
  }
}

// Applies a stored mask (bits_in): one thread per element, no draw.
template <typename T>
__global__ void __launch_bounds__(kThreads) dropout_stored_kernel(DropoutArgs<T> a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.numel;
       i += stride) {
    a.apply(i, static_cast<opmath_t<T>>((a.bits_in[i / 8] >> (i % 8)) & 1));
  }
}

// Channel-wise dropout (group >= 2): the mask index of element i is
// i / group, whose word cuda_dropout_word gives as for any mask index; the
// group elements of a channel share it, so it is computed once per tile
// instead of once per element. The tile loop is the same for the whole block,
// so every thread meets every barrier.
template <typename T>
__global__ void __launch_bounds__(kThreads) dropout_group_kernel(DropoutArgs<T> a) {
  __shared__ uint32_t words[kGroupTileChannels];
  const DropoutKey key = dropout_key(a.seed);
  const int64_t tile_stride = static_cast<int64_t>(gridDim.x) * kGroupTile;
  for (int64_t start = static_cast<int64_t>(blockIdx.x) * kGroupTile; start < a.numel;
       start += tile_stride) {
    const int64_t end = start + kGroupTile < a.numel ? start + kGroupTile : a.numel;
    const int64_t first = start / a.group;
    const int channels = static_cast<int>((end - 1) / a.group - first + 1);
    for (int k = threadIdx.x; k < channels; k += kThreads) {
      words[k] = cuda_dropout_word(key, static_cast<uint64_t>(first + k));
    }
    __syncthreads();
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
      a.apply(i, a.multiplier(words[i / a.group - first]));
    }
    __syncthreads();  // every element has read its word before the next tile writes them
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
                         l.bits_out,
                         l.bits_in,
                         l.numel,
                         l.group,
                         l.bias_numel,
                         l.seed,
                         l.threshold,
                         l.drop_all,
                         static_cast<opmath_t<T>>(l.keep_prob)};
  if (l.bits_in != nullptr) {
    dropout_stored_kernel<T><<<blocks_for(l.numel), kThreads, 0, stream>>>(a);
  } else if (l.group == 1) {
    const int64_t lanes = (l.numel + kDropoutBlock - 1) / kDropoutBlock * kDropoutLanes;
    dropout_lanes_kernel<T><<<blocks_for(lanes), kThreads, 0, stream>>>(a);
  } else {
    const int64_t tiles = (l.numel + kGroupTile - 1) / kGroupTile;
    dropout_group_kernel<T><<<blocks_for(tiles * kThreads), kThreads, 0, stream>>>(a);
  }
}

}  // namespace

void launch_dropout(const DropoutLaunch& l, cudaStream_t stream) {
  if (l.numel == 0) return;
  dispatch_dtype(l.dtype, [&](auto t) { launch_typed<typename decltype(t)::type>(l, stream); });
}

}  // namespace fastopt::cuda
