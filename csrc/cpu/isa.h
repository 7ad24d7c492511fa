// Run-time choice of the CPU instruction set.
//
// The kernels under csrc/cpu/kernels/ are compiled three times by setup.py:
// baseline x86-64, AVX2+FMA, and AVX-512 (F/BW/VL/DQ), each time with the
// matching CPU_CAPABILITY define so that at::vec::Vectorized uses real SIMD
// instead of its generic fallback. At load time we pick the best variant this
// CPU supports. -march=native is never used: it ties the binary to the build
// machine.
#pragma once

namespace fastopt::cpu {

enum class Isa : int { Default = 0, AVX2 = 1, AVX512 = 2 };

// The best instruction set this CPU and OS support.
Isa best_supported_isa();

// The instruction set in use. Starts as best_supported_isa(), lowered by the
// environment variable FASTOPT_CPU_CAPABILITY (or ATen's ATEN_CPU_CAPABILITY)
// set to "default", "avx2" or "avx512".
Isa current_isa();

// Selects an instruction set; throws if this CPU does not support it. Tests
// use it to run every compiled variant.
void set_isa(Isa isa);

const char* isa_name(Isa isa);

// The variant of a kernel for the instruction set in use.
template <typename Fn>
Fn pick_isa(Fn default_fn, Fn avx2_fn, Fn avx512_fn) {
  switch (current_isa()) {
    case Isa::AVX512: return avx512_fn;
    case Isa::AVX2: return avx2_fn;
    default: return default_fn;
  }
}

}  // namespace fastopt::cpu

// Name of `fn`'s variant in the translation unit being compiled, e.g.
// adam_kernel_AVX512 when setup.py passes -DCPU_CAPABILITY=AVX512.
#define FASTOPT_ISA_CONCAT_(a, b) a##_##b
#define FASTOPT_ISA_CONCAT(a, b) FASTOPT_ISA_CONCAT_(a, b)
#define FASTOPT_ISA_SYMBOL(fn) FASTOPT_ISA_CONCAT(fn, CPU_CAPABILITY)

// Declares the three variants of kernel `fn` of type `Fn`, each defined by a
// kernel TU as `Fn const FASTOPT_ISA_SYMBOL(fn) = ...;`, and `fn()`, which
// returns the variant for the instruction set in use.
#define FASTOPT_DECLARE_ISA_KERNEL(Fn, fn)                                       \
  extern Fn const fn##_DEFAULT;                                                  \
  extern Fn const fn##_AVX2;                                                     \
  extern Fn const fn##_AVX512;                                                   \
  inline Fn fn() { return ::fastopt::cpu::pick_isa(fn##_DEFAULT, fn##_AVX2, fn##_AVX512); }
