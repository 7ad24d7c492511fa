// How the torch-free kernels read and write storage: 16-byte vector loads and
// stores, and conversions between a storage type and its arithmetic type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/philox.h"
#include "cuda/kernels/dtype.h"

namespace fastopt::cuda {

// NOTE: [16-byte vector access]
// A 16-byte load or store (LDG.128/STG.128) moves the most bytes per
// instruction, so a memory-bound optimizer step issues a quarter of the
// instructions of element access for float (an eighth for half/bfloat16). The
// hardware requires the address to be 16-byte aligned: a misaligned vector
// access faults, it is not a slow path. The caching allocator aligns tensors,
// but a view with a storage offset (param[1:], a slice of a flat buffer) need
// not be aligned, so callers test `is_aligned` and otherwise access elements.
constexpr int kVectorBytes = 16;

// Elements of T in one vector: 4 float, 2 double, 8 half or bfloat16.
template <typename T>
constexpr int kVecSize = kVectorBytes / static_cast<int>(sizeof(T));

// N elements of T, aligned as one access of N * sizeof(T) bytes. A list whose
// elements are narrower than its call's widest list (the 16-bit grads of
// float32 masters) moves as many elements per access as the widest one, so
// 8 bytes per access for 4 bfloat16 next to 4 floats.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

// Host side: calls fn(std::integral_constant<int, VEC>{}): the 16-byte vector when
// `vectorize`, single elements otherwise.
template <typename T, typename Fn>
void with_vec(bool vectorize, const Fn& fn) {
  if (vectorize) return fn(std::integral_constant<int, kVecSize<T>>{});
  fn(std::integral_constant<int, 1>{});
}

// Whether p may be accessed as Vec<T, N>.
template <int N, typename T>
__device__ __forceinline__ bool is_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N) == 0;
}

// `src` must be aligned for Vec<T, N>.
template <typename T, int N>
__device__ __forceinline__ void load_vec(T (&dst)[N], const T* src) {
  const Vec<T, N> v = *reinterpret_cast<const Vec<T, N>*>(src);
#pragma unroll
  for (int i = 0; i < N; ++i) dst[i] = v.val[i];
}

// `dst` must be aligned for Vec<T, N>.
template <typename T, int N>
__device__ __forceinline__ void store_vec(T* dst, const T (&src)[N]) {
  Vec<T, N> v;
#pragma unroll
  for (int i = 0; i < N; ++i) v.val[i] = src[i];
  *reinterpret_cast<Vec<T, N>*>(dst) = v;
}

// The arithmetic type of a storage type, as at::opmath_type: float for float,
// half and bfloat16, double for double.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

template <typename T>
struct StorageType {
  using type = T;
};

// Calls fn(StorageType<T>{}) with the storage type T of `dtype`: the one
// switch from the launch structs' DType to the kernels' element types.
template <typename Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: return fn(StorageType<float>{});
    case DType::Float64: return fn(StorageType<double>{});
    case DType::Float16: return fn(StorageType<__half>{});
    case DType::BFloat16: return fn(StorageType<__nv_bfloat16>{});
  }
}

// NOTE: [explicit half conversions]
// torch.utils.cpp_extension compiles with -D__CUDA_NO_HALF_CONVERSIONS__ and
// -D__CUDA_NO_BFLOAT16_CONVERSIONS__, which remove the implicit conversions of
// __half and __nv_bfloat16, so convert with the intrinsics (round to nearest
// even, as c10::Half and c10::BFloat16 do). CMakeLists.txt sets the same macros.
__device__ __forceinline__ float to_opmath(float x) { return x; }
__device__ __forceinline__ double to_opmath(double x) { return x; }
__device__ __forceinline__ float to_opmath(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_opmath(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_opmath(opmath_t<T> x);
template <>
__device__ __forceinline__ float from_opmath<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_opmath<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_opmath<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_opmath<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// x rounded to storage type T: to nearest even, or, for bfloat16 with
// `stochastic`, up or down at random from the 32-bit `word` of NOTE: [rounding
// stream] (common/philox.h), one definition with the CPU kernels.
template <typename T>
__device__ __forceinline__ T round_to(opmath_t<T> x, [[maybe_unused]] bool stochastic,
                                      [[maybe_unused]] uint32_t word) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if (stochastic) return __ushort_as_bfloat16(bf16_bits_stochastic(__float_as_uint(x), word));
  }
  return from_opmath<T>(x);
}

}  // namespace fastopt::cuda
