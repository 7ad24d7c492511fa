// fastopt._C: importing this pybind11 module loads the shared library, whose
// static initialisers register every op with the dispatcher. The module
// itself only reports build facts and lets tests pick a CPU kernel variant.
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include <string>

#include "cpu/isa.h"
#include "cpu/output_cache.h"

namespace py = pybind11;

namespace {

fastopt::cpu::Isa parse_isa(const std::string& name) {
  using fastopt::cpu::Isa;
  for (Isa isa : {Isa::Default, Isa::AVX2, Isa::AVX512}) {
    if (name == fastopt::cpu::isa_name(isa)) return isa;
  }
  throw py::value_error("unknown CPU capability '" + name +
                        "'; expected 'default', 'avx2' or 'avx512'");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastopt's compiled kernels; import fastopt instead.";
  m.def("build_info", [] {
    py::dict info;
#ifdef FASTOPT_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cpu_capability"] = fastopt::cpu::isa_name(fastopt::cpu::current_isa());
    info["cpu_capability_best"] = fastopt::cpu::isa_name(fastopt::cpu::best_supported_isa());
    info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                            std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH);
    return info;
  });
  m.def(
      "_set_cpu_capability",
      [](const std::string& name) {
        const fastopt::cpu::Isa isa = parse_isa(name);
        if (static_cast<int>(isa) > static_cast<int>(fastopt::cpu::best_supported_isa())) {
          throw py::value_error("this CPU does not support " + name);
        }
        fastopt::cpu::set_isa(isa);
      },
      "Select the CPU kernel variant ('default', 'avx2' or 'avx512'); for tests and benchmarks.");
  m.def("_set_cpu_cache_limit", [](size_t bytes) { fastopt::cpu::set_output_cache_limit(bytes); });
  m.def("_empty_cpu_cache", [] { fastopt::cpu::empty_output_cache(); });
  // The cache size that decides streamed stores (stream_output); tests size
  // their inputs past it.
  m.def("_last_level_cache_bytes", [] { return fastopt::cpu::last_level_cache_bytes(); });
  m.def("_cpu_cache_stats", [] {
    const fastopt::cpu::OutputCacheStats s = fastopt::cpu::output_cache_stats();
    py::dict d;
    d["cached_bytes"] = s.cached_bytes;
    d["limit_bytes"] = s.limit_bytes;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    return d;
  });
}
