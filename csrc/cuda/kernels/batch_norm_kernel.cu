// CUDA BatchNorm kernels (see batch_norm_kernel.h).
//
// Reduction: each block sums a slice of one channel (channels first: a
// channel's N * S values, grid.y = channel) or a block of rows for 32
// channels (channels last: a warp reads 32 consecutive channels of a row, so
// loads coalesce). Each thread sums a few values in the arithmetic type; the
// block combines its threads in double and writes one partial per channel to
// the workspace; a last kernel adds the partials per channel in index order.
// grid.x is the partial (slice or row block). gridDim.y is capped at 65535,
// so past that many channels (tiles of 32 channels) a block loops over
// channels gridDim.y apart; every (partial, channel) sum is the same either way.
#include "cuda/kernels/batch_norm_kernel.h"

#include "cuda/kernels/vec_memory.cuh"

namespace fastopt::cuda {
namespace {

constexpr int kThreads = 256;
// Values a thread sums in the arithmetic type before the block goes to double.
constexpr int64_t kValuesPerThread = 16;
constexpr int64_t kMaxPartials = 1024;
// Channels-last blocks: 32 channels (one warp) by 8 row stripes.
constexpr int kLaneChannels = 32;
constexpr int kRowStripes = kThreads / kLaneChannels;
constexpr int64_t kMaxBlocks = 1 << 16;
constexpr int64_t kMaxGridY = 65535;  // the hardware limit of gridDim.y

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t clamp_partials(int64_t n) { return n < 1 ? 1 : (n > kMaxPartials ? kMaxPartials : n); }
unsigned grid_y(int64_t n) { return static_cast<unsigned>(n < kMaxGridY ? n : kMaxGridY); }

// Partials per channel for a shape: slices of a channel (channels first) or
// row blocks (channels last).
int64_t partial_count(const BatchNormShape& s) {
  const int64_t values = s.N * s.S;
  if (s.channels_last) return clamp_partials(ceil_div(values, kRowStripes * kValuesPerThread));
  return clamp_partials(ceil_div(values, kThreads * kValuesPerThread));
}

template <typename T>
struct ReduceArgs {
  const T* x;
  const T* dy;
  const opmath_t<T>* center;
  double* workspace;  // [partials, 2, C]
  int64_t N, C, S;
  bool gradient;
};

// The two summands of one value.
template <typename T>
__device__ __forceinline__ void add_value(const ReduceArgs<T>& a, int64_t i, opmath_t<T> k,
                                          opmath_t<T>& s1, opmath_t<T>& s2) {
  const opmath_t<T> d = to_opmath(a.x[i]) - k;
  const opmath_t<T> u = a.gradient ? to_opmath(a.dy[i]) : d;
  s1 += u;
  s2 += u * d;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_channels_first_kernel(ReduceArgs<T> a) {
  __shared__ double shared[2][kThreads];
  const int64_t values = a.N * a.S;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double* out = a.workspace + static_cast<int64_t>(blockIdx.x) * 2 * a.C;
  // c is the same for the whole block, so every thread meets every barrier.
  for (int64_t c = blockIdx.y; c < a.C; c += gridDim.y) {
    const opmath_t<T> k = a.center[c];
    opmath_t<T> s1 = 0, s2 = 0;
    for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < values;
         v += stride) {
      const int64_t n = v / a.S;
      add_value(a, (n * a.C + c) * a.S + (v - n * a.S), k, s1, s2);
    }
    shared[0][threadIdx.x] = static_cast<double>(s1);
    shared[1][threadIdx.x] = static_cast<double>(s2);
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (static_cast<int>(threadIdx.x) < half) {
        shared[0][threadIdx.x] += shared[0][threadIdx.x + half];
        shared[1][threadIdx.x] += shared[1][threadIdx.x + half];
      }
      __syncthreads();
    }
    // The next channel may refill shared without a barrier: past the
    // reduction's last one only thread 0 reads it, and only slot 0, which no
    // other thread writes.
    if (threadIdx.x == 0) {
      out[c] = shared[0][0];
      out[a.C + c] = shared[1][0];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_channels_last_kernel(ReduceArgs<T> a) {
  __shared__ double shared[2][kRowStripes][kLaneChannels];
  const int lane = threadIdx.x % kLaneChannels, stripe = threadIdx.x / kLaneChannels;
  const int64_t rows = a.N * a.S, blocks = gridDim.x;
  const int64_t first = rows * blockIdx.x / blocks, last = rows * (blockIdx.x + 1) / blocks;
  double* out = a.workspace + static_cast<int64_t>(blockIdx.x) * 2 * a.C;
  // The tile is the same for the whole block, so every thread meets every barrier.
  for (int64_t tile = blockIdx.y; tile * kLaneChannels < a.C; tile += gridDim.y) {
    const int64_t c = tile * kLaneChannels + lane;
    opmath_t<T> s1 = 0, s2 = 0;
    if (c < a.C) {
      const opmath_t<T> k = a.center[c];
      for (int64_t r = first + stripe; r < last; r += kRowStripes) add_value(a, r * a.C + c, k, s1, s2);
    }
    shared[0][stripe][lane] = static_cast<double>(s1);
    shared[1][stripe][lane] = static_cast<double>(s2);
    __syncthreads();
    if (stripe == 0 && c < a.C) {
      double t1 = 0, t2 = 0;
      for (int s = 0; s < kRowStripes; ++s) {
        t1 += shared[0][s][lane];
        t2 += shared[1][s][lane];
      }
      out[c] = t1;
      out[a.C + c] = t2;
    }
    __syncthreads();  // stripe 0 has read every stripe's sums before the next tile writes them
  }
}

// sums[j] = sum over partials p of workspace[p][j], j in [0, 2C), in order.
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const double* workspace, int64_t partials, int64_t width, double* sums) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= width) return;
  double total = 0;
  for (int64_t p = 0; p < partials; ++p) total += workspace[p * width + j];
  sums[j] = total;
}

template <typename T>
void reduce_typed(const BatchNormReduceLaunch& l, cudaStream_t stream) {
  const BatchNormShape& s = l.shape;
  const ReduceArgs<T> a{static_cast<const T*>(l.x),
                        static_cast<const T*>(l.dy),
                        static_cast<const opmath_t<T>*>(l.center),
                        l.workspace,
                        s.N,
                        s.C,
                        s.S,
                        l.gradient};
  const int64_t partials = partial_count(s);
  if (s.channels_last) {
    const dim3 grid(static_cast<unsigned>(partials), grid_y(ceil_div(s.C, kLaneChannels)));
    reduce_channels_last_kernel<T><<<grid, kThreads, 0, stream>>>(a);
  } else {
    const dim3 grid(static_cast<unsigned>(partials), grid_y(s.C));
    reduce_channels_first_kernel<T><<<grid, kThreads, 0, stream>>>(a);
  }
  const int64_t width = 2 * s.C;
  sum_partials_kernel<<<static_cast<unsigned>(ceil_div(width, kThreads)), kThreads, 0, stream>>>(
      l.workspace, partials, width, l.sums);
}

template <typename T>
struct AffineArgs {
  const T* x;
  const T* dy;
  T* out;
  const opmath_t<T>* center;
  const opmath_t<T>* p;
  const opmath_t<T>* q;
  const opmath_t<T>* r;
  int64_t numel, C, S;
  bool channels_last;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) affine_kernel(AffineArgs<T> a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.numel;
       i += stride) {
    const int64_t c = a.channels_last ? i % a.C : (i / a.S) % a.C;
    opmath_t<T> v = (to_opmath(a.x[i]) - a.center[c]) * a.p[c] + a.r[c];
    if (a.dy != nullptr) v += to_opmath(a.dy[i]) * a.q[c];
    a.out[i] = from_opmath<T>(v);
  }
}

template <typename T>
void affine_typed(const BatchNormAffineLaunch& l, cudaStream_t stream) {
  const BatchNormShape& s = l.shape;
  const AffineArgs<T> a{static_cast<const T*>(l.x),
                        static_cast<const T*>(l.dy),
                        static_cast<T*>(l.out),
                        static_cast<const opmath_t<T>*>(l.center),
                        static_cast<const opmath_t<T>*>(l.p),
                        static_cast<const opmath_t<T>*>(l.q),
                        static_cast<const opmath_t<T>*>(l.r),
                        s.N * s.C * s.S,
                        s.C,
                        s.S,
                        s.channels_last};
  const int64_t blocks = ceil_div(a.numel, kThreads);
  affine_kernel<T><<<static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0,
                     stream>>>(a);
}

}  // namespace

int64_t batch_norm_reduce_workspace(const BatchNormShape& shape) {
  return partial_count(shape) * 2 * shape.C;
}

void launch_batch_norm_reduce(const BatchNormReduceLaunch& l, cudaStream_t stream) {
  if (l.shape.C == 0) return;
  dispatch_dtype(l.shape.dtype, [&](auto t) { reduce_typed<typename decltype(t)::type>(l, stream); });
}

void launch_batch_norm_affine(const BatchNormAffineLaunch& l, cudaStream_t stream) {
  if (l.shape.N * l.shape.C * l.shape.S == 0) return;
  dispatch_dtype(l.shape.dtype, [&](auto t) { affine_typed<typename decltype(t)::type>(l, stream); });
}

}  // namespace fastopt::cuda
