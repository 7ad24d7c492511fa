// The global gradient norm on the multi-tensor-apply driver: each block
// reduces its chunk, then thread 0 folds the block's result into a two-double
// accumulator with one atomic; a one-thread kernel finishes the norm. Only
// kernels are enqueued, so a step that clips stays capturable in a CUDA graph.
#include "cuda/kernels/grad_norm_kernel.h"

#include <cmath>

#include "cuda/kernels/multi_tensor_apply.cuh"

namespace fastopt::cuda {
namespace {

template <NormKind KIND>
__device__ __forceinline__ double identity() {
  return KIND == NormKind::NegInf ? INFINITY : 0.0;
}

template <NormKind KIND, typename M>
__device__ __forceinline__ M accumulate(M acc, M x, M p) {
  // fabs, not x < 0 ? -x : x, which keeps the sign bit of -0.0 and of a
  // negative NaN: atomic_combine orders values by their bits, and a set sign
  // bit sorts above every positive double, so -0.0 would lose the -inf norm's
  // atomicMin to any positive block minimum.
  const M a = fabs(x);
  if constexpr (KIND == NormKind::Two) {
    return acc + x * x;
  } else if constexpr (KIND == NormKind::One) {
    return acc + a;
  } else if constexpr (KIND == NormKind::Inf) {
    return (a != a || a > acc) ? a : acc;  // NaN wins
  } else if constexpr (KIND == NormKind::NegInf) {
    return (a != a || a < acc) ? a : acc;
  } else if constexpr (KIND == NormKind::Zero) {
    return acc + (x != M(0) ? M(1) : M(0));
  } else {
    return acc + pow(a, p);
  }
}

template <NormKind KIND>
__device__ __forceinline__ double combine(double a, double b) {
  if constexpr (KIND == NormKind::Inf) {
    return (b != b || b > a) ? b : a;
  } else if constexpr (KIND == NormKind::NegInf) {
    return (b != b || b < a) ? b : a;
  } else {
    return a + b;
  }
}

// Values of acc[1], the flag word: raised with atomicMax on the bits, so a
// block that saw a NaN is not overwritten by one that saw only an inf.
constexpr double kSawNonfinite = 1.0;
constexpr double kSawNaNMinimum = 2.0;  // the -inf norm is NaN; see atomic_combine

__device__ __forceinline__ void raise_flag(double* flag, double value) {
  atomicMax(reinterpret_cast<unsigned long long*>(flag),
            static_cast<unsigned long long>(__double_as_longlong(value)));
}

// Non-negative doubles (and positive NaN, whose bits sort above +inf) order
// like their bit patterns, so max and min are integer atomics on the bits.
// That makes NaN win atomicMax but lose atomicMin, so a NaN block minimum
// raises kSawNaNMinimum instead and finish_kernel returns NaN, as torch does.
template <NormKind KIND>
__device__ __forceinline__ void atomic_combine(double* acc, double value) {
  if constexpr (KIND == NormKind::Inf) {
    atomicMax(reinterpret_cast<unsigned long long*>(acc),
              static_cast<unsigned long long>(__double_as_longlong(value)));
  } else if constexpr (KIND == NormKind::NegInf) {
    if (value != value) {
      raise_flag(acc + 1, kSawNaNMinimum);
    } else {
      atomicMin(reinterpret_cast<unsigned long long*>(acc),
                static_cast<unsigned long long>(__double_as_longlong(value)));
    }
  } else {
    atomicAdd(acc, value);
  }
}

template <NormKind KIND>
__device__ __forceinline__ double warp_combine(double x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x = combine<KIND>(x, __shfl_down_sync(0xffffffffu, x, offset));
  }
  return x;
}

template <typename T, NormKind KIND>
struct GradNormFunctor {
  using storage_t = T;
  static constexpr int kDepth = 1;
  double* acc;
  double p;

  __device__ void operator()(const Chunk<T, 1>& chunk, const float*) const {
    using M = opmath_t<T>;
    M value = static_cast<M>(identity<KIND>());
    M check = M(0);  // sums x - x: NaN once any element is inf or NaN
    const M mp = static_cast<M>(p);
    chunk.for_each(0u, [&](M (&v)[1]) {
      value = accumulate<KIND>(value, v[0], mp);
      check += v[0] - v[0];
    });
    __shared__ double partial[kBlockSize / kWarpSize];
    __shared__ int bad;
    if (threadIdx.x == 0) bad = 0;
    __syncthreads();
    if (check != check) bad = 1;  // benign race: every writer stores 1
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const double w = warp_combine<KIND>(static_cast<double>(value));
    if (lane == 0) partial[warp] = w;
    __syncthreads();
    if (warp == 0) {
      const int num_warps = static_cast<int>(blockDim.x) / kWarpSize;
      const double b = warp_combine<KIND>(lane < num_warps ? partial[lane] : identity<KIND>());
      if (lane == 0) {
        atomic_combine<KIND>(acc, b);
        if (bad) raise_flag(acc + 1, kSawNonfinite);
      }
    }
    // The block's next chunk reuses the shared arrays.
    __syncthreads();
  }
};

__global__ void init_kernel(NormKind kind, bool empty, double* acc) {
  // min |x| starts from +inf; over no elements at all the norm is 0, as on the CPU.
  acc[0] = kind == NormKind::NegInf && !empty ? INFINITY : 0.0;
  acc[1] = 0.0;
}

__global__ void finish_kernel(NormKind kind, double p, const double* acc, void* norm,
                              bool norm_is_double, float* nonfinite) {
  double value = acc[0];
  if (kind == NormKind::Two) value = sqrt(value);
  if (kind == NormKind::P) value = pow(value, 1.0 / p);
  if (kind == NormKind::NegInf && acc[1] == kSawNaNMinimum) value = NAN;
  if (norm_is_double) {
    *static_cast<double*>(norm) = value;
  } else {
    *static_cast<float*>(norm) = static_cast<float>(value);
  }
  *nonfinite = acc[1] != 0.0 ? 1.f : 0.f;
}

template <typename T, NormKind KIND>
void launch_kind(const GradNormLaunch& l, cudaStream_t stream) {
  const GradNormFunctor<T, KIND> functor{l.acc, l.p};
  void* const* const lists[] = {l.grads};
  multi_tensor_apply(make_tensor_lists<1>(lists, l.numels, nullptr, nullptr, l.num_tensors),
                     functor, stream);
}

template <typename T>
void launch_dtype(const GradNormLaunch& l, cudaStream_t stream) {
  switch (l.kind) {
    case NormKind::Two: return launch_kind<T, NormKind::Two>(l, stream);
    case NormKind::One: return launch_kind<T, NormKind::One>(l, stream);
    case NormKind::Inf: return launch_kind<T, NormKind::Inf>(l, stream);
    case NormKind::NegInf: return launch_kind<T, NormKind::NegInf>(l, stream);
    case NormKind::Zero: return launch_kind<T, NormKind::Zero>(l, stream);
    case NormKind::P: return launch_kind<T, NormKind::P>(l, stream);
  }
}

}  // namespace

void launch_grad_norm_init(NormKind kind, bool empty, double* acc, cudaStream_t stream) {
  init_kernel<<<1, 1, 0, stream>>>(kind, empty, acc);
}

void launch_grad_norm(const GradNormLaunch& l, cudaStream_t stream) {
  if (l.num_tensors == 0) return;
  dispatch_dtype(l.dtype, [&](auto storage) { launch_dtype<typename decltype(storage)::type>(l, stream); });
}

void launch_grad_norm_finish(NormKind kind, double p, const double* acc, void* norm,
                             bool norm_is_double, float* nonfinite, cudaStream_t stream) {
  finish_kernel<<<1, 1, 0, stream>>>(kind, p, acc, norm, norm_is_double, nonfinite);
}

}  // namespace fastopt::cuda
