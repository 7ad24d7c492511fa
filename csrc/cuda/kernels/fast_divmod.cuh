// Division of 32-bit indices by a divisor fixed for a whole launch, as a
// multiply-high, an add and a shift instead of a division.
//
// Why: a GPU has no integer divide instruction. A 64-bit `i / S` or `i % C`
// is a subroutine of several dozen instructions, and an elementwise kernel
// that finds each element's channel that way spends more issue slots on the
// index than on the arithmetic and the memory access together.
//
// The method is round-up division by an invariant integer (Granlund and
// Montgomery, "Division by invariant integers using multiplication", PLDI
// 1994, section 4): with l = ceil(log2 d) and
// m = floor(2^32 * (2^l - d) / d) + 1, n / d = (mulhi(n, m) + n) >> l for
// every 32-bit n, the sum taken in 64 bits so that it cannot overflow.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastopt::cuda {

struct FastDivmod {
  uint32_t divisor = 1;
  uint32_t magic = 1;
  uint32_t shift = 0;

  FastDivmod() = default;
  // d >= 1.
  __host__ explicit FastDivmod(uint32_t d) : divisor(d) {
    while ((uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d) / d + 1);
  }

  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return static_cast<uint32_t>((static_cast<uint64_t>(__umulhi(n, magic)) + n) >> shift);
  }
  __device__ __forceinline__ uint32_t mod(uint32_t n) const { return n - div(n) * divisor; }
};

}  // namespace fastopt::cuda
