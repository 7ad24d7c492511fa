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
__all__ = ["EMA", "SGD", "Adagrad", "Adam", "AdamW", "RMSprop", "build_info", "nn", "optim"]


def build_info() -> dict[str, Any]:
    """Facts about the compiled extension.

    Returns a dict with ``cuda`` (CUDA kernels compiled in), ``cpu_capability``
    (the CPU instruction set the kernels use now), ``cpu_capability_best``
    (the best one this CPU supports) and ``torch_version`` (the torch the
    extension was compiled against).
    """
    return dict(_C.build_info())
