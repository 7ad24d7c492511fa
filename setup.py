"""Build fastopt's C++ (and, with a CUDA torch, CUDA) extension fastopt._C.

Build without isolation so the extension compiles against the torch you run:

    pip install --no-build-isolation .

FASTOPT_CUDA=1 forces the CUDA kernels (failing if torch has no CUDA), and
FASTOPT_CUDA=0 leaves them out. Unset, they are built when the installed torch
is a CUDA build and nvcc is found; no GPU is needed to build.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - a clear message instead of a traceback
    sys.exit(
        "fastopt builds against the installed torch: install torch first, then run "
        "`pip install --no-build-isolation .`"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))

# The kernels under csrc/cpu/kernels/ are compiled once per instruction set,
# with ATen's CPU_CAPABILITY define, and chosen at run time (csrc/cpu/isa.h).
ISA_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
}
# -fopenmp: at::parallel_for is inline OpenMP code (ATen's OpenMP backend), so
# without it the multi-tensor driver silently runs on one thread. The libgomp
# it links resolves, at run time, to the one torch has already loaded (same
# soname), so torch.set_num_threads governs fastopt too.
CXX_FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
# FASTOPT_CUDA_ARCHS="90" builds for the H100 alone (half the nvcc time).
CUDA_ARCHS = os.environ.get("FASTOPT_CUDA_ARCHS", "80 90").split()


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _want_cuda() -> bool:
    forced = os.environ.get("FASTOPT_CUDA")
    has_cuda_torch = torch.version.cuda is not None
    has_nvcc = cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    if forced == "1":
        if not (has_cuda_torch and has_nvcc):
            sys.exit("FASTOPT_CUDA=1 but the installed torch is not a CUDA build or nvcc is missing")
        return True
    if forced == "0":
        return False
    return has_cuda_torch and has_nvcc


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus one object per (ISA, kernel source)."""

    def build_extension(self, ext) -> None:
        isa_sources = _sources("csrc/cpu/kernels/*.cpp")
        cxx = list(ext.extra_compile_args["cxx"])  # torch's ABI and extension-name flags

        def compile_isa(isa: str) -> list[str]:
            return self.compiler.compile(
                isa_sources,
                output_dir=os.path.join(self.build_temp, f"isa_{isa.lower()}"),
                macros=[("CPU_CAPABILITY", isa), (f"CPU_CAPABILITY_{isa}", None)],
                include_dirs=ext.include_dirs,
                extra_postargs={"cxx": cxx + ISA_FLAGS[isa], "nvcc": []},
            )

        # One ninja run per instruction set (each has its own build.ninja in
        # its own folder), all at once: run one after another, each waited
        # for its slowest file, which left a 16-core machine mostly idle.
        with concurrent.futures.ThreadPoolExecutor(len(ISA_FLAGS)) as pool:
            for objects in pool.map(compile_isa, ISA_FLAGS):
                ext.extra_objects += objects
        super().build_extension(ext)


def _has_shared_libstdcxx(cxx: str) -> bool:
    """Whether the GCC driver `cxx` links libstdc++ as a shared library.

    -print-file-name answers a path where the driver has the file and the bare
    name where it does not. A driver that cannot answer (not GCC's) is trusted.
    """
    try:
        found = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return True
    return os.path.isabs(found.stdout.strip())


def _use_shared_libstdcxx() -> None:
    """Build with a C++ compiler that links libstdc++ as a shared library.

    A compiler with only libstdc++.a (the GPU image's CXX=/opt/gcc/bin/g++)
    puts a private copy of libstdc++ into the extension. torch's process has
    the system's libstdc++.so.6 loaded already, whose global locale the copy's
    iostream code reads with its own facet ids: the first integer that an
    error message formats (c10::str) crashes the process. With such a CXX,
    build with a g++ on PATH that has the shared library (CC to match, as nvcc's
    host compiler), and refuse to build if there is none.
    """
    cxx = os.environ.get("CXX", "c++")
    if _has_shared_libstdcxx(cxx):
        return
    for candidate in (shutil.which("g++"), "/usr/bin/g++"):
        if candidate and os.path.exists(candidate) and _has_shared_libstdcxx(candidate):
            gcc = os.path.join(os.path.dirname(candidate), "gcc")
            print(f"fastopt: {cxx} has no shared libstdc++; building with {candidate}", file=sys.stderr)
            os.environ["CXX"] = candidate
            if os.path.exists(gcc):
                os.environ["CC"] = gcc
            return
    sys.exit(
        f"fastopt: the C++ compiler {cxx} links libstdc++ statically, and an extension with its own "
        "libstdc++ crashes inside torch's process; set CXX (and CC) to a compiler with libstdc++.so"
    )


def _write_build_config(with_cuda: bool) -> None:
    # Read by fastopt/__init__.py before it loads _C, so that a torch the
    # extension was not built for gets a clear error instead of a symbol error.
    path = os.path.join(ROOT, "fastopt", "_build_config.py")
    with open(path, "w") as f:
        f.write("# Generated by setup.py at build time; do not edit.\n")
        f.write(f"TORCH_VERSION = {torch.__version__.split('+')[0]!r}\n")
        f.write(f"CUDA = {with_cuda!r}\n")


def _extension():
    _use_shared_libstdcxx()
    with_cuda = _want_cuda()
    _write_build_config(with_cuda)
    sources = _sources("csrc/*.cpp") + _sources("csrc/common/*.cpp") + _sources("csrc/autograd/*.cpp")
    sources += _sources("csrc/cpu/*.cpp")
    args = dict(
        name="fastopt._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": list(CXX_FLAGS)},
        extra_link_args=list(LINK_FLAGS),
    )
    if not with_cuda:
        return cpp_extension.CppExtension(sources=sources, **args)
    sources += _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/kernels/*.cu")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
    args["extra_compile_args"] = {
        "cxx": CXX_FLAGS + ["-DFASTOPT_WITH_CUDA"],
        "nvcc": ["-O3", "-std=c++17", "-DFASTOPT_WITH_CUDA", "--expt-relaxed-constexpr", *gencode],
    }
    return cpp_extension.CUDAExtension(sources=sources, **args)


setup(
    packages=find_packages(include=["fastopt", "fastopt.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
)
