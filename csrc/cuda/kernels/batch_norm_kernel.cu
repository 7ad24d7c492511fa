// CUDA BatchNorm kernels (see batch_norm_kernel.h).
//
// Reduction: each block sums a slice of one channel (channels first: a
// channel's N * S values, grid.y = channel) or a block of rows for 32
// channels (channels last: a warp reads 32 consecutive channels of a row, so
// loads coalesce). Each thread sums a few values in the arithmetic type; the
// block combines its threads in double and writes one partial per channel to
// the workspace; the moments or gradient kernel adds the partials per
// channel, a warp per channel in a fixed order.
// grid.x is the partial (slice or row block). gridDim.y is capped at 65535,
// so past that many channels (tiles of 32 channels) a block loops over
// channels gridDim.y apart; every (partial, channel) sum is the same either way.
//
// Threads load kUnroll values before adding any: a thread with one load in
// flight at a time leaves the memory system with too few requests to reach
// its bandwidth.
#include "cuda/kernels/batch_norm_kernel.h"

#include "common/math_ops.h"
#include "common/moment_shift.h"
#include "cuda/kernels/fast_divmod.cuh"
#include "cuda/kernels/vec_memory.cuh"

#include <type_traits>

namespace fastopt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kUnroll = 4;
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
unsigned grid_x(int64_t blocks) { return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks); }
bool fits_32_bits(int64_t n) { return n <= int64_t{0xffffffff}; }
bool aligned(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

// Partials per channel for a shape: slices of a channel (channels first) or
// row blocks (channels last).
int64_t partial_count(const BatchNormShape& s) {
  const int64_t values = s.N * s.S;
  if (s.channels_last) return clamp_partials(ceil_div(values, kRowStripes * kValuesPerThread));
  return clamp_partials(ceil_div(values, kThreads * kValuesPerThread));
}

// q = n / d and n - q * d, by FastDivmod where every index fits in 32 bits
// (`narrow`, uniform over a launch), by division otherwise.
struct IndexDivider {
  FastDivmod fast;
  int64_t d;
  bool narrow;

  IndexDivider(int64_t divisor, int64_t largest_index)
      : fast(static_cast<uint32_t>(fits_32_bits(divisor) ? divisor : 1)),
        d(divisor),
        narrow(fits_32_bits(largest_index) && fits_32_bits(divisor)) {}

  __device__ __forceinline__ int64_t div(int64_t n) const {
    return narrow ? static_cast<int64_t>(fast.div(static_cast<uint32_t>(n))) : n / d;
  }
  __device__ __forceinline__ int64_t mod(int64_t n) const { return n - div(n) * d; }
};

// ---------------------------------------------------------------- shift
template <typename T>
__global__ void __launch_bounds__(kThreads) shift_kernel(const T* x, opmath_t<T>* shift,
                                                         BatchNormShape s, int64_t samples,
                                                         int64_t positions) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= s.C) return;
  double sum = 0;
  for (int64_t n = 0; n < samples; ++n) {
    for (int64_t pos = 0; pos < positions; ++pos) {
      const int64_t i = s.channels_last ? (n * s.S + pos) * s.C + c : (n * s.C + c) * s.S + pos;
      sum += static_cast<double>(to_opmath(x[i]));
    }
  }
  const double mean = sum / static_cast<double>(samples * positions);
  shift[c] = static_cast<opmath_t<T>>(::fastopt::norm::finite_shift(mean));
}

// ---------------------------------------------------------------- reduction
template <typename T>
struct ReduceArgs {
  const T* x;
  const T* dy;
  const opmath_t<T>* center;
  double* workspace;  // [partials, 2, C]
  int64_t N, C, S;
  bool gradient;
};

// Adds the summands of one value of x (and of dy, for the gradient sums) into s1 and s2.
template <typename T>
__device__ __forceinline__ void add_value(const ReduceArgs<T>& a, T xv, T gv, opmath_t<T> k,
                                          opmath_t<T>& s1, opmath_t<T>& s2) {
  const opmath_t<T> d = to_opmath(xv) - k;
  const opmath_t<T> u = a.gradient ? to_opmath(gv) : d;
  s1 += u;
  s2 += u * d;
}

// Writes the block's sums of every thread's (s1, s2) into out[c] and
// out[C + c]. Every thread of the block must call it.
__device__ __forceinline__ void block_sums_to(double (&shared)[2][kThreads], double s1, double s2,
                                              double* out, int64_t C, int64_t c) {
  shared[0][threadIdx.x] = s1;
  shared[1][threadIdx.x] = s2;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) {
      shared[0][threadIdx.x] += shared[0][threadIdx.x + half];
      shared[1][threadIdx.x] += shared[1][threadIdx.x + half];
    }
    __syncthreads();
  }
  // A later call may refill shared without a barrier: past the reduction's
  // last one only thread 0 reads it, and only slot 0, which no other thread
  // writes.
  if (threadIdx.x == 0) {
    out[c] = shared[0][0];
    out[C + c] = shared[1][0];
  }
}

// The values of channel c are numbered v = n * S + s over its N planes; the
// grid-stride loop takes kUnroll of them at a time and finds each one's
// plane with `planes` (a divider by S).
template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_channels_first_kernel(ReduceArgs<T> a,
                                                                         IndexDivider planes) {
  __shared__ double shared[2][kThreads];
  using M = opmath_t<T>;
  const int64_t values = a.N * a.S, plane_stride = a.C * a.S;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double* out = a.workspace + static_cast<int64_t>(blockIdx.x) * 2 * a.C;
  // c is the same for the whole block, so every thread meets every barrier.
  for (int64_t c = blockIdx.y; c < a.C; c += gridDim.y) {
    const M k = a.center[c];
    const T* x = a.x + c * a.S;
    const T* dy = a.gradient ? a.dy + c * a.S : nullptr;
    M s1 = 0, s2 = 0;
    for (int64_t v0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v0 < values;
         v0 += kUnroll * stride) {
      T xv[kUnroll], gv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = v0 + u * stride;
        if (v < values) {
          const int64_t n = planes.div(v);
          const int64_t i = n * plane_stride + (v - n * a.S);
          xv[u] = x[i];
          if (dy != nullptr) gv[u] = dy[i];
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (v0 + u * stride < values) add_value(a, xv[u], dy != nullptr ? gv[u] : xv[u], k, s1, s2);
      }
    }
    block_sums_to(shared, static_cast<double>(s1), static_cast<double>(s2), out, a.C, c);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_channels_last_kernel(ReduceArgs<T> a) {
  __shared__ double shared[2][kRowStripes][kLaneChannels];
  using M = opmath_t<T>;
  const int lane = threadIdx.x % kLaneChannels, stripe = threadIdx.x / kLaneChannels;
  const int64_t rows = a.N * a.S, blocks = gridDim.x;
  const int64_t first = rows * blockIdx.x / blocks, last = rows * (blockIdx.x + 1) / blocks;
  double* out = a.workspace + static_cast<int64_t>(blockIdx.x) * 2 * a.C;
  // The tile is the same for the whole block, so every thread meets every barrier.
  for (int64_t tile = blockIdx.y; tile * kLaneChannels < a.C; tile += gridDim.y) {
    const int64_t c = tile * kLaneChannels + lane;
    M s1 = 0, s2 = 0;
    if (c < a.C) {
      const M k = a.center[c];
      for (int64_t r0 = first + stripe; r0 < last; r0 += kUnroll * kRowStripes) {
        T xv[kUnroll], gv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t r = r0 + u * kRowStripes;
          if (r < last) {
            xv[u] = a.x[r * a.C + c];
            if (a.gradient) gv[u] = a.dy[r * a.C + c];
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (r0 + u * kRowStripes < last) add_value(a, xv[u], a.gradient ? gv[u] : xv[u], k, s1, s2);
        }
      }
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

// ------------------------------------------------------- per-channel arithmetic
// v rounded to R; to the 16-bit types through float, as c10's conversions
// from double go (so the CPU op rounds the same way).
template <typename R>
__device__ __forceinline__ R from_double(double v) {
  if constexpr (std::is_same_v<R, double>) {
    return v;
  } else {
    return from_opmath<R>(static_cast<float>(v));
  }
}

// The sums of channel c over every partial, in double, by one warp: lane l
// adds partials l, l + 32, ..., then the warp adds its lanes in a fixed tree.
// The result reaches every lane.
__device__ __forceinline__ void channel_totals(const double* workspace, int64_t partials,
                                               int64_t C, int64_t c, double& s1, double& s2) {
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  s1 = 0;
  s2 = 0;
  for (int64_t p = lane; p < partials; p += kWarpSize) {
    s1 += workspace[p * 2 * C + c];
    s2 += workspace[p * 2 * C + C + c];
  }
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    s1 += __shfl_xor_sync(0xffffffffu, s1, offset);
    s2 += __shfl_xor_sync(0xffffffffu, s2, offset);
  }
}

// The channel of the calling warp, one warp per channel; -1 past the last.
__device__ __forceinline__ int64_t warp_channel(int64_t C) {
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  return c < C ? c : -1;
}

// p[c] = v rounded to p's dtype, when p is not null.
__device__ __forceinline__ void store_as(DType dtype, void* p, int64_t c, double v) {
  if (p == nullptr) return;
  switch (dtype) {
    case DType::Float32: static_cast<float*>(p)[c] = from_double<float>(v); return;
    case DType::Float64: static_cast<double*>(p)[c] = v; return;
    case DType::Float16: static_cast<__half*>(p)[c] = from_double<__half>(v); return;
    case DType::BFloat16: static_cast<__nv_bfloat16*>(p)[c] = from_double<__nv_bfloat16>(v); return;
  }
}

template <typename M>
__device__ __forceinline__ void store_if(void* p, int64_t c, double v) {
  if (p != nullptr) static_cast<M*>(p)[c] = static_cast<M>(v);
}

template <typename M>
__global__ void __launch_bounds__(kThreads) moments_kernel(BatchNormMomentsLaunch l, int64_t partials) {
  const int64_t C = l.shape.C;
  const int64_t c = warp_channel(C);
  if (c < 0) return;  // whole warps leave together
  double s1, s2;
  channel_totals(l.workspace, partials, C, c, s1, s2);
  if (threadIdx.x % kWarpSize != 0) return;
  const double count = static_cast<double>(l.count);
  const double d = s1 / count;
  const double mean = static_cast<double>(static_cast<const M*>(l.shift)[c]) + d;
  const double m2 = MathOps<double>::max(s2 - s1 * d, 0.0);  // NaN stays NaN, unlike fmax
  const double var = m2 / count;
  const double invstd = 1.0 / sqrt(var + l.eps);
  const double w = l.weight != nullptr ? static_cast<double>(static_cast<const M*>(l.weight)[c]) : 1.0;
  store_if<M>(l.mean, c, mean);
  store_if<M>(l.m2, c, m2);
  store_if<M>(l.var, c, var);
  store_if<M>(l.invstd, c, invstd);
  store_if<M>(l.scale, c, invstd * w);
}

template <typename M>
__global__ void __launch_bounds__(kThreads) gradient_kernel(BatchNormGradientLaunch l, int64_t partials) {
  const int64_t C = l.shape.C;
  const int64_t c = warp_channel(C);
  if (c < 0) return;
  double s1, s2;
  if (l.workspace != nullptr) {
    channel_totals(l.workspace, partials, C, c, s1, s2);
  } else {
    s1 = static_cast<double>(static_cast<const M*>(l.sum_dy)[c]);
    s2 = static_cast<double>(static_cast<const M*>(l.sum_dy_xmu)[c]);
  }
  if (threadIdx.x % kWarpSize != 0) return;
  store_if<M>(l.sum_dy_out, c, s1);
  store_if<M>(l.sum_dy_xmu_out, c, s2);
  if (l.invstd == nullptr) return;
  const double is = static_cast<double>(static_cast<const M*>(l.invstd)[c]);
  const double w = l.weight != nullptr ? static_cast<double>(static_cast<const M*>(l.weight)[c]) : 1.0;
  const double q = is * w;
  const double inv_n = 1.0 / static_cast<double>(l.count);
  store_if<M>(l.p, c, -q * is * is * s2 * inv_n);
  store_if<M>(l.q, c, q);
  store_if<M>(l.r, c, -q * s1 * inv_n);
  store_as(l.grad_dtype, l.grad_weight, c, s2 * is);
  store_as(l.grad_dtype, l.grad_bias, c, s1);
}

// ---------------------------------------------------------------- affine
template <typename T>
struct AffineArgs {
  const T* x;
  const T* dy;
  T* out;
  const opmath_t<T>* center;
  const opmath_t<T>* p;
  const opmath_t<T>* q;
  const opmath_t<T>* r;
  int64_t numel;
  IndexDivider planes;    // by S (channels first)
  IndexDivider channels;  // by C
  bool channels_last;

  __device__ __forceinline__ int64_t channel(int64_t i) const {
    return channels.mod(channels_last ? i : planes.div(i));
  }

  __device__ __forceinline__ T value(T xv, T gv, int64_t c) const {
    opmath_t<T> v = (to_opmath(xv) - center[c]) * p[c];
    if (r != nullptr) v += r[c];
    if (dy != nullptr) v += to_opmath(gv) * q[c];
    return from_opmath<T>(v);
  }
};

// VEC consecutive elements per access. With VEC > 1 the caller has checked
// that x, dy and out are aligned for it and that VEC divides S (channels
// first: one channel per vector) or C (channels last: VEC consecutive
// channels); with VEC = 1, kUnroll single elements a blockDim apart.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) affine_kernel(AffineArgs<T> a) {
  constexpr int kPerThread = VEC > 1 ? 1 : kUnroll;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * VEC * kPerThread;
  for (int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x * kPerThread + threadIdx.x) * VEC;
       i0 < a.numel; i0 += stride) {
    if constexpr (VEC > 1) {
      T xv[VEC], gv[VEC], ov[VEC];
      load_vec<T, VEC>(xv, a.x + i0);
      if (a.dy != nullptr) load_vec<T, VEC>(gv, a.dy + i0);
      const int64_t c = a.channel(i0);
#pragma unroll
      for (int j = 0; j < VEC; ++j) ov[j] = a.value(xv[j], a.dy != nullptr ? gv[j] : xv[j], a.channels_last ? c + j : c);
      store_vec<T, VEC>(a.out + i0, ov);
    } else {
      T xv[kPerThread], gv[kPerThread];
#pragma unroll
      for (int u = 0; u < kPerThread; ++u) {
        const int64_t i = i0 + u * static_cast<int64_t>(blockDim.x);
        if (i < a.numel) {
          xv[u] = a.x[i];
          if (a.dy != nullptr) gv[u] = a.dy[i];
        }
      }
#pragma unroll
      for (int u = 0; u < kPerThread; ++u) {
        const int64_t i = i0 + u * static_cast<int64_t>(blockDim.x);
        if (i < a.numel) a.out[i] = a.value(xv[u], a.dy != nullptr ? gv[u] : xv[u], a.channel(i));
      }
    }
  }
}

// ---------------------------------------------------------------- running stats
template <typename R>
__global__ void __launch_bounds__(kThreads) running_kernel(BatchNormRunningLaunch l) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= l.C) return;
  R* running = static_cast<R*>(l.running);
  const double stat = l.stat_double ? static_cast<const double*>(l.stat)[c]
                                    : static_cast<double>(static_cast<const float*>(l.stat)[c]);
  const double updated = static_cast<double>(to_opmath(running[c])) * (1.0 - l.momentum) +
                         stat * (l.momentum * l.scale);
  running[c] = from_double<R>(updated);
}

// ---------------------------------------------------------------- launches
template <typename T>
void shift_typed(const BatchNormShiftLaunch& l, cudaStream_t stream) {
  shift_kernel<T><<<static_cast<unsigned>(ceil_div(l.shape.C, kThreads)), kThreads, 0, stream>>>(
      static_cast<const T*>(l.x), static_cast<opmath_t<T>*>(l.shift), l.shape, l.samples, l.positions);
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
    // Value indices below N * S are divided.
    reduce_channels_first_kernel<T><<<grid, kThreads, 0, stream>>>(a, IndexDivider(s.S, s.N * s.S));
  }
}

template <typename T>
void affine_typed(const BatchNormAffineLaunch& l, cudaStream_t stream) {
  const BatchNormShape& s = l.shape;
  const int64_t numel = s.N * s.C * s.S;
  const AffineArgs<T> a{static_cast<const T*>(l.x),
                        static_cast<const T*>(l.dy),
                        static_cast<T*>(l.out),
                        static_cast<const opmath_t<T>*>(l.center),
                        static_cast<const opmath_t<T>*>(l.p),
                        static_cast<const opmath_t<T>*>(l.q),
                        static_cast<const opmath_t<T>*>(l.r),
                        numel,
                        IndexDivider(s.S, numel),  // only indices below numel are divided
                        IndexDivider(s.C, numel),
                        s.channels_last};
  const bool vectorize = aligned(l.x) && aligned(l.dy) && aligned(l.out) &&
                         (s.channels_last ? s.C : s.S) % kVecSize<T> == 0;
  with_vec<T>(vectorize, [&](auto vec) {
    constexpr int kVec = decltype(vec)::value;
    constexpr int kPerThread = kVec > 1 ? 1 : kUnroll;
    const unsigned blocks = grid_x(ceil_div(numel, int64_t{kThreads} * kVec * kPerThread));
    affine_kernel<T, kVec><<<blocks, kThreads, 0, stream>>>(a);
  });
}

// One warp per channel.
unsigned channel_warp_blocks(int64_t C) {
  return static_cast<unsigned>(ceil_div(C * kWarpSize, kThreads));
}

}  // namespace

int64_t batch_norm_reduce_workspace(const BatchNormShape& shape) {
  return partial_count(shape) * 2 * shape.C;
}

void launch_batch_norm_shift(const BatchNormShiftLaunch& l, cudaStream_t stream) {
  if (l.shape.C == 0) return;
  dispatch_dtype(l.shape.dtype, [&](auto t) { shift_typed<typename decltype(t)::type>(l, stream); });
}

void launch_batch_norm_reduce(const BatchNormReduceLaunch& l, cudaStream_t stream) {
  if (l.shape.C == 0) return;
  dispatch_dtype(l.shape.dtype, [&](auto t) { reduce_typed<typename decltype(t)::type>(l, stream); });
}

// The per-channel kernels are templated on the arithmetic type of the [C]
// arrays, which dispatch_dtype's storage type gives through opmath_t.
void launch_batch_norm_moments(const BatchNormMomentsLaunch& l, cudaStream_t stream) {
  if (l.shape.C == 0) return;
  dispatch_dtype(l.shape.dtype, [&](auto t) {
    moments_kernel<opmath_t<typename decltype(t)::type>>
        <<<channel_warp_blocks(l.shape.C), kThreads, 0, stream>>>(l, partial_count(l.shape));
  });
}

void launch_batch_norm_gradient(const BatchNormGradientLaunch& l, cudaStream_t stream) {
  if (l.shape.C == 0) return;
  dispatch_dtype(l.shape.dtype, [&](auto t) {
    gradient_kernel<opmath_t<typename decltype(t)::type>>
        <<<channel_warp_blocks(l.shape.C), kThreads, 0, stream>>>(l, partial_count(l.shape));
  });
}

void launch_batch_norm_affine(const BatchNormAffineLaunch& l, cudaStream_t stream) {
  if (l.shape.N * l.shape.C * l.shape.S == 0) return;
  dispatch_dtype(l.shape.dtype, [&](auto t) { affine_typed<typename decltype(t)::type>(l, stream); });
}

void launch_batch_norm_running(const BatchNormRunningLaunch& l, cudaStream_t stream) {
  if (l.C == 0) return;
  dispatch_dtype(l.running_dtype, [&](auto t) {
    running_kernel<typename decltype(t)::type>
        <<<static_cast<unsigned>(ceil_div(l.C, kThreads)), kThreads, 0, stream>>>(l);
  });
}

}  // namespace fastopt::cuda
