// Portable qualifiers shared by the CPU kernels and the torch-free CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define FASTOPT_HOST_DEVICE __host__ __device__
#define FASTOPT_INLINE __forceinline__
#else
#define FASTOPT_HOST_DEVICE
#define FASTOPT_INLINE inline __attribute__((always_inline))
#endif
