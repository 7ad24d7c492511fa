"""Running a test under each compiled CPU kernel variant (see csrc/cpu/isa.h)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import fastopt

ALL_ISAS = ("default", "avx2", "avx512")


def supported_isas() -> list[str]:
    """The variants this CPU can run, baseline first."""
    best = ALL_ISAS.index(fastopt.build_info()["cpu_capability_best"])
    return list(ALL_ISAS[: best + 1])


@contextlib.contextmanager
def cpu_capability(isa: str) -> Iterator[None]:
    """Run the body with the kernels of ``isa``, then restore the previous choice."""
    previous = fastopt.build_info()["cpu_capability"]
    fastopt._C._set_cpu_capability(isa)
    try:
        yield
    finally:
        fastopt._C._set_cpu_capability(previous)
