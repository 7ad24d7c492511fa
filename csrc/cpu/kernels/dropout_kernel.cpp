// Dropout CPU kernel. Compiled once per instruction set (see cpu/isa.h);
// every symbol here lives in the CPU_CAPABILITY namespace or carries its name.
//
// A chunk is processed in tiles of kTile elements: first the tile's mask is
// drawn into an L1-resident array of keep bits (16 Philox lanes at a time, the
// CPU layout of NOTE: [dropout stream] in common/philox.h), then one vector
// pass reads x (and bias, residual), applies it and writes out. Splitting the
// two keeps the Philox loop free of loads and dtype conversions, so the
// compiler vectorizes it over the lanes (zmm registers in the AVX-512 build).
// The bits are also the format of the 1-bit mask mode, which so only copies
// them out (bits_out) or in (bits_in) in place of the draw.
#include "cpu/kernels/dropout_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/kernels/vec_io.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// 1024 elements: their 128-byte mask stays in L1 next to the data streaming by.
constexpr int64_t kTile = 1024;
static_assert(kTile % kCpuDropoutBlock == 0, "tiles hold whole Philox blocks");
constexpr int64_t kTileBytes = kTile / 8;
// A tile's mask array has this much slack past kTileBytes, so that the 4-byte
// reads of BitMask::bits_at never leave it.
constexpr int64_t kMaskSlack = 4;

// 16 Philox lanes in GCC/Clang vector types, which the compiler maps to zmm
// registers (AVX-512), ymm (AVX2) or xmm (baseline) from the same code. (Plain
// arrays of lanes were scalarized by GCC instead.)
//
// The even and odd lanes run as two sets of 8 64-bit lanes, each holding its
// 32-bit Philox word in the low half. The multiplications are then single
// vpmuludq (32 x 32 -> 64 bits of the low halves) with no shuffles: the
// product's high half is `p >> 32` and its low half is p itself, whose upper
// bits are never read. Garbage in the upper halves only ever reaches other
// upper halves (xor is bitwise, and multiplications read low halves), so the
// low halves are exactly the scalar philox4x32_10 of common/philox.h.
using U64x8 = uint64_t __attribute__((vector_size(64)));
using U32x16 = uint32_t __attribute__((vector_size(64)));
static_assert(kDropoutLanes == 16, "two U64x8 hold the lanes of a Philox block");
constexpr uint64_t kLow32 = 0xFFFFFFFFull;

// The 64-bit products of the low halves of `a` with m.
inline U64x8 mul_wide(U64x8 a, uint32_t m) {
#if defined(CPU_CAPABILITY_AVX512)
  // GCC turns the portable form below into vpmullq, a full 64-bit multiply
  // several times slower on Zen 4; vpmuludq is what is meant.
  return reinterpret_cast<U64x8>(_mm512_mul_epu32(reinterpret_cast<__m512i>(a),
                                                  _mm512_set1_epi64(static_cast<long long>(m))));
#else
  return (a & kLow32) * static_cast<uint64_t>(m);
#endif
}

#if defined(CPU_CAPABILITY_AVX2)
// The rounds on the ymm halves of the lanes, in AVX2 intrinsics: from the
// vector types GCC emits a full 64-bit multiply emulated in three vpmuludq,
// and spills the lanes between rounds (16M elements in the AVX2 build: 15.9
// ms with vpmuludq on the vector types, 12.4 ms so).
inline void philox_lanes(U64x8 (&c)[4], uint32_t k0, uint32_t k1) {
  __m256i v[4][2];
  __builtin_memcpy(v, c, sizeof(v));
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const __m256i kv0 = _mm256_set1_epi64x(k0), kv1 = _mm256_set1_epi64x(k1);
    for (int h = 0; h < 2; ++h) {
      const __m256i p0 = _mm256_mul_epu32(v[0][h], m0);
      const __m256i p1 = _mm256_mul_epu32(v[2][h], m1);
      v[0][h] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), v[1][h]), kv0);
      v[1][h] = p1;
      v[2][h] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), v[3][h]), kv1);
      v[3][h] = p0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  __builtin_memcpy(c, v, sizeof(v));
}
#else
inline void philox_lanes(U64x8 (&c)[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const U64x8 p0 = mul_wide(c[0], kPhiloxM0);
    const U64x8 p1 = mul_wide(c[2], kPhiloxM1);
    c[0] = (p1 >> 32) ^ c[1] ^ k0;
    c[1] = p1;
    c[2] = (p0 >> 32) ^ c[3] ^ k1;
    c[3] = p0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}
#endif

// The lanes of 16 half words h above, and equal to, the threshold's high half.
struct HalfCompare {
  uint32_t above, tie;
};
inline HalfCompare compare_half(U32x16 h, uint32_t t_high) {
#if defined(CPU_CAPABILITY_AVX512)
  // Straight into mask registers.
  const __m512i hv = reinterpret_cast<__m512i>(h), tv = _mm512_set1_epi32(static_cast<int>(t_high));
  return {_mm512_cmpgt_epu32_mask(hv, tv), _mm512_cmpeq_epi32_mask(hv, tv)};
#elif defined(__SSE2__)
  // Comparisons of the 64-byte vector types themselves are lowered to scalar
  // code without AVX-512 (GCC 12), which made the AVX2 and baseline builds
  // over ten times slower; so quarters of 4 lanes in SSE2, whose signed
  // comparisons order half words (below 2^16) as unsigned ones would. (Halves
  // of 8 lanes in AVX2 were slower in the AVX2 build, 19.5 against 12.4 ms for
  // 16M elements: GCC moved them through the stack.)
  __m128i q[4];
  __builtin_memcpy(q, &h, sizeof(q));
  const __m128i tv = _mm_set1_epi32(static_cast<int>(t_high));
  HalfCompare r{0, 0};
  for (int k = 0; k < 4; ++k) {
    r.above |= static_cast<uint32_t>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(q[k], tv)))) << (4 * k);
    r.tie |= static_cast<uint32_t>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(q[k], tv)))) << (4 * k);
  }
  return r;
#else
  HalfCompare r{0, 0};
  for (int l = 0; l < 16; ++l) {
    r.above |= static_cast<uint32_t>(h[l] > t_high) << l;
    r.tie |= static_cast<uint32_t>(h[l] == t_high) << l;
  }
  return r;
#endif
}

// The lanes of `tie` (mask indices first + l) that low(j) keeps, as bits:
// about one element in 65536 gets here.
__attribute__((noinline)) uint32_t break_ties(const DropoutKernelConfig& cfg, uint64_t first,
                                              uint32_t tie) {
  uint32_t keep = 0;
  for (; tie != 0; tie &= tie - 1) {
    const int l = __builtin_ctz(tie);
    if (cpu_dropout_tie_keeps(cfg.key, first + l, cfg.threshold)) keep |= 1u << l;
  }
  return keep;
}

// bits[0, 16 * nblocks) <- the keep bits of the 128 * nblocks mask indices
// from 128 * first_block, index i at bit i % 8 of byte i / 8; the scalar
// definition is cpu_dropout_keep in common/philox.h.
void fill_mask(const DropoutKernelConfig& cfg, uint64_t first_block, int64_t nblocks,
               uint8_t* bits) {
  if (cfg.drop_all) {
    std::memset(bits, 0, nblocks * (kCpuDropoutBlock / 8));
    return;
  }
  const U64x8 even_lane = {0, 2, 4, 6, 8, 10, 12, 14};
  const DropoutKey key = cfg.key;
  const uint32_t t_high = cfg.threshold >> 16;
  for (int64_t b = 0; b < nblocks; ++b, bits += kCpuDropoutBlock / 8) {
    const uint64_t block = first_block + static_cast<uint64_t>(b);
    const uint64_t counter = block * kDropoutLanes;
    // counter is a multiple of 16, so adding the lane never carries into c[1].
    const U64x8 c0 = even_lane + (counter & kLow32);
    const U64x8 c1 = U64x8{} + (counter >> 32), c2 = U64x8{} + key.o0, c3 = U64x8{} + key.o1;
    U64x8 even[4] = {c0, c1, c2, c3};
    U64x8 odd[4] = {c0 + 1, c1, c2, c3};
    philox_lanes(even, key.k0, key.k1);
    philox_lanes(odd, key.k0, key.k1);
    for (int w = 0; w < 4; ++w) {
      const U32x16 word = reinterpret_cast<U32x16>((even[w] & kLow32) | (odd[w] << 32));
      for (int half = 0; half < 2; ++half) {
        HalfCompare cmp = compare_half(half == 0 ? (word & 0xFFFFu) : (word >> 16), t_high);
        if (__builtin_expect(cmp.tie != 0, 0)) {
          cmp.above |= break_ties(cfg, block * kCpuDropoutBlock + 32 * w + 16 * half, cmp.tie);
        }
        bits[4 * w + 2 * half] = static_cast<uint8_t>(cmp.above);
        bits[4 * w + 2 * half + 1] = static_cast<uint8_t>(cmp.above >> 8);
      }
    }
  }
}

// The keep bits of mask indices [begin, end) into `bits`, drawn from the
// start of begin's block; returns that block's first index (the index of bit 0).
int64_t fill_mask_range(const DropoutKernelConfig& cfg, int64_t begin, int64_t end, uint8_t* bits) {
  const int64_t base = begin - begin % kCpuDropoutBlock;
  const int64_t blocks = (end - base + kCpuDropoutBlock - 1) / kCpuDropoutBlock;
  fill_mask(cfg, static_cast<uint64_t>(base / kCpuDropoutBlock), blocks, bits);
  return base;
}

// The 0/1 multipliers of a run. BitMask reads the tile's keep bits, element
// i of the run at bit `first + i`; BroadcastMask has one for the whole run
// (channel-wise dropout).
struct BitMask {
  const uint8_t* bits;
  int64_t first;

  // Bits first + i .. first + i + 24 (at least) of the mask, from bit 0 up.
  uint32_t bits_at(int64_t i) const {
    const int64_t pos = first + i;
    const uint8_t* b = bits + pos / 8;
    const uint32_t w = static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 |
                       static_cast<uint32_t>(b[2]) << 16 | static_cast<uint32_t>(b[3]) << 24;
    return w >> (pos % 8);
  }
  template <typename opmath_t>
  opmath_t at(int64_t i) const {
    const int64_t pos = first + i;
    return static_cast<opmath_t>((bits[pos / 8] >> (pos % 8)) & 1u);
  }
  template <typename Vec>
  Vec vec(int64_t i) const;
};

template <typename opmath_t>
struct BroadcastMask {
  opmath_t m;
  template <typename T>
  T at(int64_t) const {
    return m;
  }
  template <typename Vec>
  Vec vec(int64_t) const {
    return Vec(m);
  }
};

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline at::vec::Vectorized<float> BitMask::vec(int64_t i) const {
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(bits_at(i)), _mm512_set1_ps(1.0f));
}
template <>
inline at::vec::Vectorized<double> BitMask::vec(int64_t i) const {
  return _mm512_maskz_mov_pd(static_cast<__mmask8>(bits_at(i)), _mm512_set1_pd(1.0));
}
#elif defined(CPU_CAPABILITY_AVX2)
// Lane l tests bit l: a broadcast of the bits, and with each lane's bit,
// compared with it.
template <>
inline at::vec::Vectorized<float> BitMask::vec(int64_t i) const {
  const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i set = _mm256_cmpeq_epi32(
      _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits_at(i))), lane), lane);
  return _mm256_and_ps(_mm256_castsi256_ps(set), _mm256_set1_ps(1.0f));
}
template <>
inline at::vec::Vectorized<double> BitMask::vec(int64_t i) const {
  const __m256i lane = _mm256_setr_epi64x(1, 2, 4, 8);
  const __m256i set = _mm256_cmpeq_epi64(
      _mm256_and_si256(_mm256_set1_epi64x(static_cast<long long>(bits_at(i))), lane), lane);
  return _mm256_and_pd(_mm256_castsi256_pd(set), _mm256_set1_pd(1.0));
}
#endif

// Pointers to the first element of a run of n elements.
template <typename scalar_t>
struct Run {
  const scalar_t* x;
  const scalar_t* bias;      // nullable; contiguous over the run
  const scalar_t* residual;  // nullable
  scalar_t* out;
  int64_t n;
};

// out = (x + bias) * m / q + residual over one run, m the mask's multipliers.
// Multiplying by exactly 1 or 0 and then dividing makes a kept element
// exactly (x + bias) / (1 - p), as x / (1 - p) computes it in torch; a dropped
// one is x * 0, which keeps torch's NaN propagation.
template <typename scalar_t, typename Mask, typename opmath_t>
void apply_run(const Run<scalar_t>& r, const Mask& mask, opmath_t q, bool stream) {
  using IO = VecIO<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int K = IO::kVecs;
  int64_t i = 0;
#if !defined(CPU_CAPABILITY_DEFAULT)
  // The baseline build's generic Vectorized is slower than the scalar loop,
  // which the compiler vectorizes with SSE2 (as in cpu/kernels/elementwise.h).
  const Vec qv(q);
  for (; i + IO::kBlock <= r.n; i += IO::kBlock) {
    Vec v[K];
    IO::load(r.x + i, v);
    if (r.bias != nullptr) {
      Vec b[K];
      IO::load(r.bias + i, b);
      for (int k = 0; k < K; ++k) v[k] = v[k] + b[k];
    }
    for (int k = 0; k < K; ++k) {
      const Vec mk = mask.template vec<Vec>(i + k * Vec::size());
      v[k] = v[k] * mk / qv;
    }
    if (r.residual != nullptr) {
      Vec res[K];
      IO::load(r.residual + i, res);
      for (int k = 0; k < K; ++k) v[k] = v[k] + res[k];
    }
    if constexpr (K == 1) {
      if (stream && can_stream(r.out + i)) {
        stream_store(r.out + i, v[0]);
        continue;
      }
    }
    IO::store(r.out + i, v);
  }
#endif
  for (; i < r.n; ++i) {
    opmath_t v = static_cast<opmath_t>(r.x[i]);
    if (r.bias != nullptr) v += static_cast<opmath_t>(r.bias[i]);
    v = v * mask.template at<opmath_t>(i) / q;
    if (r.residual != nullptr) v += static_cast<opmath_t>(r.residual[i]);
    r.out[i] = static_cast<scalar_t>(v);
  }
}

// Calls fn(run) over elements [begin, end), cut where the bias wraps around,
// so that within each run the bias is contiguous.
template <typename scalar_t, typename Fn>
void for_each_bias_run(const DropoutKernelConfig& cfg, const DropoutChunk& c, int64_t begin,
                       int64_t end, const Fn& fn) {
  const auto* x = static_cast<const scalar_t*>(c.x);
  const auto* bias = static_cast<const scalar_t*>(c.bias);
  const auto* residual = static_cast<const scalar_t*>(c.residual);
  auto* out = static_cast<scalar_t*>(c.out);
  for (int64_t i = begin; i < end;) {
    int64_t stop = end;
    const scalar_t* b = nullptr;
    if (bias != nullptr) {
      const int64_t col = i % cfg.bias_numel;
      stop = std::min(end, i + cfg.bias_numel - col);
      b = bias + col;
    }
    fn(i, Run<scalar_t>{x + i, b, residual ? residual + i : nullptr, out + i, stop - i});
    i = stop;
  }
}

// Channel-wise dropout of channels-last memory (N, S, C), S = cfg.group:
// each row of C elements takes the keep bits of its sample's C mask indices
// n * C .. n * C + C - 1. They are drawn once per sample the chunk touches, by
// the vectorized fill_mask of element-wise dropout (the same words the
// contiguous path draws one channel at a time), and laid out repeated over
// enough rows to fill about a tile, so that a run of narrow rows (C = 16, say)
// is still one long vectorized pass.
template <typename scalar_t, typename opmath_t>
void channels_last_chunk(const DropoutKernelConfig& cfg, const DropoutChunk& c, opmath_t q) {
  const int64_t C = cfg.channels, sample = cfg.group * C;
  const int64_t span = std::max<int64_t>(1, kTile / C) * C;  // elements the repeated rows cover
  const auto* x = static_cast<const scalar_t*>(c.x);
  auto* out = static_cast<scalar_t*>(c.out);
  // The blocks covering one sample's C indices, which may straddle a block
  // boundary at each end; then the repeated rows, with BitMask's slack.
  std::vector<uint8_t> drawn((C / kCpuDropoutBlock + 2) * (kCpuDropoutBlock / 8));
  std::vector<uint8_t> rows((span + 7) / 8 + kMaskSlack);
  int64_t sample_drawn = -1;
  for (int64_t i = c.begin; i < c.end;) {
    const int64_t n = i / sample;
    if (n != sample_drawn) {
      const int64_t first = n * C;
      const BitMask sample_bits{drawn.data(), first - fill_mask_range(cfg, first, first + C, drawn.data())};
      std::fill(rows.begin(), rows.end(), uint8_t(0));
      for (int64_t j = 0, ch = 0; j < span; ++j, ch = ch + 1 == C ? 0 : ch + 1) {
        rows[j / 8] |= static_cast<uint8_t>(sample_bits.at<uint8_t>(ch) << (j % 8));
      }
      sample_drawn = n;
    }
    // i starts a run at its channel, col, of the repeated rows.
    const int64_t col = i % C;
    const int64_t stop = std::min({c.end, (n + 1) * sample, i + span - col});
    apply_run(Run<scalar_t>{x + i, nullptr, nullptr, out + i, stop - i}, BitMask{rows.data(), col}, q, cfg.stream);
    i = stop;
  }
}

template <typename scalar_t>
void dropout_chunk(const DropoutKernelConfig& cfg, const DropoutChunk& c) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto q = static_cast<opmath_t>(cfg.keep_prob);
  if (cfg.channels > 0) return channels_last_chunk<scalar_t>(cfg, c, q);
  if (cfg.group > 1) {
    // Channel-wise: one mask index per channel, broadcast over its elements.
    // The keep bits of up to kTile channels at a time come from the
    // vectorized fill_mask: drawn one by one (cpu_dropout_keep, a scalar
    // Philox call each) they made the pass twice as slow with 49 elements per
    // channel ((64, 2048, 7, 7) float32: 2.5 against 1.2 ms on 2 Zen 4 cores).
    alignas(64) uint8_t bits[kTileBytes + kCpuDropoutBlock / 8];
    const int64_t last_channel = (c.end - 1) / cfg.group;
    int64_t base = 0, drawn_end = 0;  // the channels [base, drawn_end) have their bits drawn
    for (int64_t i = c.begin; i < c.end;) {
      const int64_t channel = i / cfg.group;
      if (channel >= drawn_end) {
        drawn_end = std::min(last_channel + 1, channel + kTile);
        base = fill_mask_range(cfg, channel, drawn_end, bits);
      }
      const int64_t stop = std::min(c.end, (channel + 1) * cfg.group);
      const BroadcastMask<opmath_t> mask{BitMask{bits, 0}.at<opmath_t>(channel - base)};
      for_each_bias_run<scalar_t>(cfg, c, i, stop,
                                  [&](int64_t, const Run<scalar_t>& r) { apply_run(r, mask, q, cfg.stream); });
      i = stop;
    }
    return;
  }
  alignas(64) uint8_t bits[kTileBytes + kMaskSlack] = {};
  for (int64_t tile = c.begin; tile < c.end;) {
    const int64_t base = tile - tile % kCpuDropoutBlock;  // the index of bit 0 of `bits`
    const int64_t stop = std::min(c.end, base + kTile);
    // Mask arrays end within the last Philox block of 64 (dropout_mask_bytes),
    // so the copies cover only the bytes of [base, stop).
    const int64_t bytes = (stop - base + 7) / 8;
    if (c.bits_in != nullptr) {
      std::memcpy(bits, c.bits_in + base / 8, bytes);
    } else {
      fill_mask_range(cfg, base, stop, bits);
      if (c.bits_out != nullptr) std::memcpy(c.bits_out + base / 8, bits, bytes);
    }
    for_each_bias_run<scalar_t>(cfg, c, tile, stop, [&](int64_t i, const Run<scalar_t>& r) {
      apply_run(r, BitMask{bits, i - base}, q, cfg.stream);
    });
    tile = stop;
  }
}

void dropout_kernel_impl(const DropoutKernelConfig& cfg, const DropoutChunk& c) {
  switch (cfg.dtype) {
    case c10::ScalarType::Float: return dropout_chunk<float>(cfg, c);
    case c10::ScalarType::Double: return dropout_chunk<double>(cfg, c);
    case c10::ScalarType::BFloat16: return dropout_chunk<c10::BFloat16>(cfg, c);
    case c10::ScalarType::Half: return dropout_chunk<c10::Half>(cfg, c);
    // The op validates dtypes before it picks a kernel; nothing here throws
    // (see adam_kernel.cpp).
    default: return;
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

DropoutKernelFn const FASTOPT_ISA_SYMBOL(dropout_kernel) = &CPU_CAPABILITY::dropout_kernel_impl;

}  // namespace fastopt::cpu
