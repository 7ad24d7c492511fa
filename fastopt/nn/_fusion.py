"""Eager-mode module fusion (``torch.ao.quantization.fuse_modules``) of fastopt's BatchNorms.

``fuse_modules`` looks the fuser up by the exact types of the modules it is
given (Conv2d then BatchNorm2d, say), and torch's fused modules (``BNReLU2d``,
``ConvBn2d`` for QAT) check those exact types again. A model that swapped
torch's BatchNorm for fastopt's would therefore fail to fuse with
"did not find fuser method". So each of torch's BatchNorm patterns is
registered again with fastopt's class in its place, and its fuser receives
the torch twin of fastopt's module (:class:`ScriptsAsTorch`: the same
parameters, buffers and settings). The fused result is what torch builds
from its own module: a Conv2d with the statistics folded in, or a torch
BatchNorm that shares the parameters (fused modules run torch's kernels, as
scripted ones do).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._scripting import ScriptsAsTorch
from .conversion import replacement_table


def _torch_modules(fuser: Callable[..., Any]) -> Callable[..., Any]:
    """``fuser`` called with torch twins in place of fastopt's modules."""

    def fuse(is_qat: bool, *modules: torch.nn.Module) -> Any:
        return fuser(is_qat, *(m.__prepare_scriptable__() if isinstance(m, ScriptsAsTorch) else m for m in modules))

    return fuse


def register_fuser_methods() -> None:
    """Add fastopt's BatchNorms to torch's table of eager fusion patterns.

    Every pattern with a torch class that fastopt replaces (see
    :func:`~fastopt.nn.convert`) gets fastopt's class in its place: torch's
    patterns hold convolutions, Linear, ReLU and BatchNorms, of which fastopt
    replaces the BatchNorms. Call it once fastopt.nn exports its modules.
    The table is private to torch (there is no public registration), so a
    torch without it leaves fusion as it was: refused for fastopt's modules.
    """
    try:
        from torch.ao.quantization import fuser_method_mappings
    except ImportError:
        return
    table = getattr(fuser_method_mappings, "_DEFAULT_OP_LIST_TO_FUSER_METHOD", None)
    if not isinstance(table, dict):
        return
    fastopt_classes = replacement_table()
    for pattern, fuser in list(table.items()):
        if any(t in fastopt_classes for t in pattern):
            table.setdefault(tuple(fastopt_classes.get(t, t) for t in pattern), _torch_modules(fuser))
