// Philox 4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011) and the dropout random stream built on it.
//
// Torch-free and header-only: the CPU kernels (csrc/cpu/kernels/) and the CUDA
// kernels (csrc/cuda/kernels/) include it, so both backends use one definition
// of the stream. Philox is counter-based: the random words of counter c are a
// pure function of (c, key), so any element's mask can be recomputed alone,
// in any order, which is what lets backward regenerate the mask instead of
// saving it.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace fastopt {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

// One Philox round on one counter. Written on plain uint32 values so that the
// CPU kernels can apply it to arrays of lanes, which the compiler turns into
// SIMD (vpmuludq on AVX2/AVX-512), and CUDA to registers.
FASTOPT_HOST_DEVICE FASTOPT_INLINE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2,
                                                     uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
  const uint32_t n0 = hi1 ^ c1 ^ k0;
  const uint32_t n2 = hi0 ^ c3 ^ k1;
  c0 = n0;
  c1 = lo1;
  c2 = n2;
  c3 = lo0;
}

// Philox 4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1), in place.
FASTOPT_HOST_DEVICE FASTOPT_INLINE void philox4x32_10(uint32_t (&c)[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < kPhiloxRounds; ++r) {
    philox_round(c[0], c[1], c[2], c[3], k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// NOTE: [dropout stream]
// A dropout call draws two 64-bit words from torch's generator: the Philox
// key and the high half of the 128-bit counter (the "offset"). Mask index j
// is the element's index in the tensor's logical, row-major order (divided by
// the channel size for channel-wise dropout). Each backend reads a uniform
// 32-bit word u(j) from Philox and keeps element j iff u(j) >= threshold
// (dropout_threshold below), so P(keep) = 1 - p up to 2^-33 on both. The
// backends lay the words out differently, so the same key gives a CPU tensor
// and a CUDA tensor different masks; the layout is fixed independently of the
// instruction set, the thread count and the memory layout.
//
// CUDA (cuda_dropout_word): one block of 64 indices is 16 Philox calls
// ("lanes"), and u(j) is a whole output word:
//
//   counter = (j / 64) * 16 + j % 16   (64 bits, in Philox words 0 and 1)
//   u(j)    = output word (j % 64) / 16 of that counter
//
// A CUDA thread handles one lane: 4 elements 16 apart.
//
// CPU (cpu_dropout_keep): one block of 128 indices is 16 lanes, each 32-bit
// output word giving two elements 16 bits each:
//
//   counter = (j / 128) * 16 + j % 16
//   high(j) = 16-bit half (j % 32) / 16 (0: low half) of output word
//             (j % 128) / 32 of that counter
//   low(j)  = the low 16 bits of output word 0 of counter j + 2^63
//   u(j)    = high(j) * 2^16 + low(j)
//
// low(j) decides only when high(j) equals the threshold's high half, once in
// 65536 elements, so the vector kernel draws it alone for those elements and
// one Philox call serves 8 elements instead of 4. The CPU is bound by Philox's
// arithmetic, not by memory, and this halves it while keeping the 32-bit
// threshold, that is p exactly as with whole words (a 16-bit word alone would
// round p to a multiple of 2^-16). The tie counters, with bit 63 set, never
// meet the block counters, which stay below 2^60. A 16-lane SIMD Philox yields
// 16 consecutive indices per half word without a transpose.
constexpr int kDropoutLanes = 16;
constexpr int kDropoutBlock = 4 * kDropoutLanes;     // CUDA: indices per block
constexpr int kCpuDropoutBlock = 8 * kDropoutLanes;  // CPU: indices per block
constexpr uint64_t kDropoutTieCounter = 1ull << 63;

struct DropoutKey {
  uint32_t k0, k1;  // Philox key
  uint32_t o0, o1;  // counter words 2 and 3
};

// The key and offset from the two int64 words drawn from torch's generator.
FASTOPT_HOST_DEVICE FASTOPT_INLINE DropoutKey dropout_key(const int64_t* seed) {
  const uint64_t key = static_cast<uint64_t>(seed[0]);
  const uint64_t offset = static_cast<uint64_t>(seed[1]);
  return {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32),
          static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)};
}

// A 32-bit word is uniform on [0, 2^32); keeping words >= round(p * 2^32)
// keeps an element with probability 1 - p up to 2^-33. p == 1 cannot be
// expressed so, and is a separate flag (drop_all) of the kernels.
inline uint32_t dropout_threshold(double p) {
  const double t = p * 4294967296.0 + 0.5;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// Output word `word` of Philox at a 64-bit counter under the call's key.
FASTOPT_HOST_DEVICE FASTOPT_INLINE uint32_t dropout_philox_word(const DropoutKey& key,
                                                                uint64_t counter, int word) {
  uint32_t c[4] = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), key.o0,
                   key.o1};
  philox4x32_10(c, key.k0, key.k1);
  return c[word];
}

// u(j) of the CUDA layout, computed alone (4 words, 1 used).
FASTOPT_HOST_DEVICE FASTOPT_INLINE uint32_t cuda_dropout_word(const DropoutKey& key, uint64_t j) {
  const uint64_t counter = (j / kDropoutBlock) * kDropoutLanes + j % kDropoutLanes;
  return dropout_philox_word(key, counter, static_cast<int>((j % kDropoutBlock) / kDropoutLanes));
}

// Whether the CPU layout keeps mask index j when high(j) equals the
// threshold's high half: low(j), the tie-break bits, decide.
inline bool cpu_dropout_tie_keeps(const DropoutKey& key, uint64_t j, uint32_t threshold) {
  return (dropout_philox_word(key, j | kDropoutTieCounter, 0) & 0xFFFFu) >= (threshold & 0xFFFFu);
}

// Whether the CPU layout keeps mask index j: u(j) >= threshold, with low(j)
// drawn only when high(j) does not decide. The scalar definition that the
// vector kernel reproduces.
inline bool cpu_dropout_keep(const DropoutKey& key, uint64_t j, uint32_t threshold) {
  const uint64_t counter = (j / kCpuDropoutBlock) * kDropoutLanes + j % kDropoutLanes;
  const uint32_t word =
      dropout_philox_word(key, counter, static_cast<int>((j % kCpuDropoutBlock) / 32));
  const uint32_t high = (j % 32 < 16) ? (word & 0xFFFFu) : (word >> 16);
  const uint32_t t_high = threshold >> 16;
  if (high != t_high) return high > t_high;
  return cpu_dropout_tie_keeps(key, j, threshold);
}

// NOTE: [rounding stream]
// Stochastic rounding of an optimizer step draws the same two int64 words as
// dropout (key, offset; see dropout_key). Element j of tensor t of the op call
// reads word j % 4 of
//
//   counter = (j / 4 as 64 bits, offset_lo + t, offset_hi)
//
// so every (step, tensor, element) gets its own word, whatever the thread
// count, chunking or backend, and a CUDA thread that owns 4 consecutive
// elements needs one Philox call.
FASTOPT_HOST_DEVICE FASTOPT_INLINE void rounding_words(const DropoutKey& key, uint32_t tensor,
                                                       uint64_t quad, uint32_t (&out)[4]) {
  out[0] = static_cast<uint32_t>(quad);
  out[1] = static_cast<uint32_t>(quad >> 32);
  out[2] = key.o0 + tensor;
  out[3] = key.o1;
  philox4x32_10(out, key.k0, key.k1);
}

// float -> bfloat16 bits, rounded stochastically: the 16 bits that truncation
// drops are added to a uniform 16-bit word first, so the result rounds away
// from zero with probability (dropped bits) / 2^16 and the expected value is
// the float itself. NaN stays NaN; values within one bf16 step of the largest
// finite bf16 may round up to inf, as they should.
FASTOPT_HOST_DEVICE FASTOPT_INLINE uint16_t bf16_bits_stochastic(uint32_t bits, uint32_t word) {
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0u) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // a quiet NaN
  }
  return static_cast<uint16_t>((bits + (word & 0xFFFFu)) >> 16);
}

}  // namespace fastopt
