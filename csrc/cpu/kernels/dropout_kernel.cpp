// Dropout CPU kernel. Compiled once per instruction set (see cpu/isa.h);
// every symbol here lives in the CPU_CAPABILITY namespace or carries its name.
//
// A chunk is processed in tiles of kTile elements: first the tile's mask is
// drawn into an L1-resident array of 0/1 multipliers (16 Philox lanes at a
// time, see NOTE: [dropout stream] in common/philox.h), then one vector pass
// reads x (and bias, residual), applies it and writes out. Splitting the two
// keeps the Philox loop free of loads and dtype conversions, so the compiler
// vectorizes it over the lanes (zmm registers in the AVX-512 build).
#include "cpu/kernels/dropout_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>

#include "cpu/kernels/vec_io.h"

namespace fastopt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// 1024 elements: a 4 KB float mask stays in L1 next to the data streaming by.
constexpr int64_t kTile = 1024;
static_assert(kTile % kDropoutBlock == 0, "tiles hold whole Philox blocks");

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
using I32x16 = int32_t __attribute__((vector_size(64)));
using F32x16 = float __attribute__((vector_size(64)));
using F64x16 = double __attribute__((vector_size(128)));
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

// m[0, 64 * nblocks) = keep multipliers (1 or 0) of mask indices starting at
// 64 * first_block; the scalar definition is dropout_word in common/philox.h.
template <typename opmath_t>
void fill_mask(const DropoutKernelConfig& cfg, uint64_t first_block, int64_t nblocks,
               opmath_t* m) {
  if (cfg.drop_all) {
    std::fill(m, m + nblocks * kDropoutBlock, opmath_t(0));
    return;
  }
  using OpVec = std::conditional_t<std::is_same_v<opmath_t, double>, F64x16, F32x16>;
  const U64x8 even_lane = {0, 2, 4, 6, 8, 10, 12, 14};
  const DropoutKey key = cfg.key;
  const uint32_t t = cfg.threshold;
  for (int64_t b = 0; b < nblocks; ++b, m += kDropoutBlock) {
    const uint64_t counter = (first_block + static_cast<uint64_t>(b)) * kDropoutLanes;
    // counter is a multiple of 16, so adding the lane never carries into c[1].
    const U64x8 c0 = even_lane + (counter & kLow32);
    const U64x8 c1 = U64x8{} + (counter >> 32), c2 = U64x8{} + key.o0, c3 = U64x8{} + key.o1;
    U64x8 even[4] = {c0, c1, c2, c3};
    U64x8 odd[4] = {c0 + 1, c1, c2, c3};
    philox_lanes(even, key.k0, key.k1);
    philox_lanes(odd, key.k0, key.k1);
    for (int w = 0; w < 4; ++w) {
      const U32x16 word = reinterpret_cast<U32x16>((even[w] & kLow32) | (odd[w] << 32));
      // A vector comparison gives -1 (true) or 0 per lane.
      const I32x16 keep = -reinterpret_cast<I32x16>(word >= t);
      const OpVec v = __builtin_convertvector(keep, OpVec);
      __builtin_memcpy(m + w * kDropoutLanes, &v, sizeof(v));
    }
  }
}

// The 1-bit mask mode. Both functions cover whole Philox blocks, the unit in
// which the mask arrays are sized, starting at element `first` (a multiple of
// kDropoutBlock, so of 8): m[j] is the multiplier of element first + j.

// bits <- m[0, 64 * nblocks), each m[j] exactly 0 or 1.
template <typename opmath_t>
void pack_mask(const opmath_t* m, int64_t first, int64_t nblocks, uint8_t* bits) {
  uint8_t* out = bits + first / 8;
  for (int64_t byte = 0; byte < nblocks * (kDropoutBlock / 8); ++byte, m += 8) {
    uint32_t v = 0;
    for (int k = 0; k < 8; ++k) v |= static_cast<uint32_t>(m[k] != opmath_t(0)) << k;
    out[byte] = static_cast<uint8_t>(v);
  }
}

// m[0, 64 * nblocks) <- the stored bits, as 0/1 multipliers.
template <typename opmath_t>
void unpack_mask(const uint8_t* bits, int64_t first, int64_t nblocks, opmath_t* m) {
  const uint8_t* in = bits + first / 8;
  for (int64_t byte = 0; byte < nblocks * (kDropoutBlock / 8); ++byte, m += 8) {
    const uint32_t v = in[byte];
    for (int k = 0; k < 8; ++k) m[k] = static_cast<opmath_t>((v >> k) & 1u);
  }
}

// Pointers to the first element of a run of n elements.
template <typename scalar_t>
struct Run {
  const scalar_t* x;
  const scalar_t* bias;      // nullable; contiguous over the run
  const scalar_t* residual;  // nullable
  scalar_t* out;
  int64_t n;
};

// out = (x + bias) * m / q + residual over one run. m is one multiplier per
// element, or with BROADCAST one for the whole run (channel-wise dropout).
// Multiplying by exactly 1 or 0 and then dividing makes a kept element
// exactly (x + bias) / (1 - p), as x / (1 - p) computes it in torch; a dropped
// one is x * 0, which keeps torch's NaN propagation.
template <bool BROADCAST, typename scalar_t, typename opmath_t>
void apply_run(const Run<scalar_t>& r, const opmath_t* m, opmath_t q, bool stream) {
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
      const Vec mk = BROADCAST ? Vec(m[0]) : Vec::loadu(m + i + k * Vec::size());
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
    v = v * m[BROADCAST ? 0 : i] / q;
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

template <typename scalar_t>
void dropout_chunk(const DropoutKernelConfig& cfg, const DropoutChunk& c) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto q = static_cast<opmath_t>(cfg.keep_prob);
  if (cfg.group > 1) {
    // Channel-wise: one Philox word per channel, broadcast over its elements.
    for (int64_t i = c.begin; i < c.end;) {
      const int64_t channel = i / cfg.group;
      const int64_t stop = std::min(c.end, (channel + 1) * cfg.group);
      const bool keep = !cfg.drop_all &&
                        dropout_word(cfg.key, static_cast<uint64_t>(channel)) >= cfg.threshold;
      const opmath_t m = keep ? opmath_t(1) : opmath_t(0);
      for_each_bias_run<scalar_t>(cfg, c, i, stop,
                                  [&](int64_t, const Run<scalar_t>& r) { apply_run<true>(r, &m, q, cfg.stream); });
      i = stop;
    }
    return;
  }
  alignas(64) opmath_t m[kTile];
  for (int64_t tile = c.begin; tile < c.end;) {
    const int64_t base = tile - tile % kDropoutBlock;  // first index of m
    const int64_t stop = std::min(c.end, base + kTile);
    const int64_t nblocks = (stop - base + kDropoutBlock - 1) / kDropoutBlock;
    if (c.bits_in != nullptr) {
      unpack_mask(c.bits_in, base, nblocks, m);
    } else {
      fill_mask(cfg, static_cast<uint64_t>(base / kDropoutBlock), nblocks, m);
      if (c.bits_out != nullptr) pack_mask(m, base, nblocks, c.bits_out);
    }
    for_each_bias_run<scalar_t>(cfg, c, tile, stop, [&](int64_t i, const Run<scalar_t>& r) {
      apply_run<false>(r, m + (i - base), q, cfg.stream);
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
