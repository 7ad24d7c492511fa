"""Drop-in ``torch.nn`` modules backed by fastopt's fused kernels."""

from __future__ import annotations

from . import functional
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .normalization import GroupNorm, LayerNorm

__all__ = [
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "functional",
]
