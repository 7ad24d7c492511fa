#include "cpu/isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>

namespace fastopt::cpu {

namespace {

bool supports(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports also checks that the OS saves the wider registers.
  switch (isa) {
    case Isa::AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
    case Isa::AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::Default:
      return true;
  }
  return false;
#else
  return isa == Isa::Default;
#endif
}

Isa parse_isa(const char* name, Isa fallback) {
  if (name == nullptr) return fallback;
  std::string s(name);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "default") return Isa::Default;
  if (s == "avx2") return Isa::AVX2;
  if (s == "avx512") return Isa::AVX512;
  return fallback;
}

Isa initial_isa() {
  Isa isa = best_supported_isa();
  // Like ATen, the environment can only lower the choice, never raise it past
  // what the CPU supports.
  const char* env = std::getenv("FASTOPT_CPU_CAPABILITY");
  if (env == nullptr) env = std::getenv("ATEN_CPU_CAPABILITY");
  const Isa requested = parse_isa(env, isa);
  return static_cast<int>(requested) < static_cast<int>(isa) ? requested : isa;
}

std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

}  // namespace

Isa best_supported_isa() {
  for (Isa isa : {Isa::AVX512, Isa::AVX2}) {
    if (supports(isa)) return isa;
  }
  return Isa::Default;
}

Isa current_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  TORCH_CHECK(supports(isa), "fastopt: this CPU does not support ", isa_name(isa));
  isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::AVX512: return "avx512";
    case Isa::AVX2: return "avx2";
    default: return "default";
  }
}

}  // namespace fastopt::cpu
