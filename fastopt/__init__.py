"""fastopt: fused optimizer, normalization and dropout kernels for PyTorch.

Importing fastopt loads the compiled extension ``fastopt._C``, which registers
the ``torch.ops.fastopt.*`` operators for CPU (and CUDA when built with it).
"""

from __future__ import annotations

from typing import Any

from ._loader import load_extension

_C = load_extension()

from . import _ops  # noqa: E402  (fake kernels need the ops registered first)
from . import nn, optim  # noqa: E402
from .optim import EMA, SGD, Adagrad, Adam, AdamW, RMSprop  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "EMA",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "RMSprop",
    "build_info",
    "cpu_cache_stats",
    "empty_cpu_cache",
    "nn",
    "optim",
    "set_cpu_cache_limit",
]


def build_info() -> dict[str, Any]:
    """Facts about the compiled extension.

    Returns a dict with ``cuda`` (CUDA kernels compiled in), ``cpu_capability``
    (the CPU instruction set the kernels use now), ``cpu_capability_best``
    (the best one this CPU supports) and ``torch_version`` (the torch the
    extension was compiled against).
    """
    return dict(_C.build_info())


# The CPU output cache (csrc/cpu/output_cache.h): large outputs of fastopt's
# CPU ops (dropout, normalization) reuse freed blocks instead of page-faulting
# fresh memory every step, as CUDA's caching allocator does for device memory.


def set_cpu_cache_limit(megabytes: int) -> None:
    """Cap the memory the CPU output cache may hold (default 1024 MB, or
    ``FASTOPT_CPU_CACHE_MB``); 0 disables caching. Trims the cache at once."""
    if isinstance(megabytes, bool) or not isinstance(megabytes, int):
        # Not int(): 1.5 would silently become 1 MB.
        raise TypeError(f"megabytes must be an int, got {type(megabytes).__name__}")
    if megabytes < 0:
        raise ValueError(f"megabytes must be >= 0, got {megabytes}")
    _C._set_cpu_cache_limit(megabytes << 20)


def empty_cpu_cache() -> None:
    """Return every cached CPU block to the system (like ``torch.cuda.empty_cache``)."""
    _C._empty_cpu_cache()


def cpu_cache_stats() -> dict[str, int]:
    """``cached_bytes``, ``limit_bytes``, and the ``hits`` and ``misses`` of cacheable allocations."""
    return dict(_C._cpu_cache_stats())
