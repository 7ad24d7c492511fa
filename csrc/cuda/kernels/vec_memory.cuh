// How the torch-free kernels read and write storage: 16-byte vector loads and
// stores, and conversions between a storage type and its arithmetic type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

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

template <typename T>
struct alignas(kVectorBytes) Vec {
  T val[kVecSize<T>];
};

__device__ __forceinline__ bool is_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0;
}

// `src` must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ void load_vec(T (&dst)[kVecSize<T>], const T* src) {
  const Vec<T> v = *reinterpret_cast<const Vec<T>*>(src);
#pragma unroll
  for (int i = 0; i < kVecSize<T>; ++i) dst[i] = v.val[i];
}

// `dst` must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ void store_vec(T* dst, const T (&src)[kVecSize<T>]) {
  Vec<T> v;
#pragma unroll
  for (int i = 0; i < kVecSize<T>; ++i) v.val[i] = src[i];
  *reinterpret_cast<Vec<T>*>(dst) = v;
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

}  // namespace fastopt::cuda
