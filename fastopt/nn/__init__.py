"""Drop-in ``torch.nn`` modules and functions backed by fastopt's kernels."""

from . import functional
from ._fusion import register_fuser_methods
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm
from .conversion import convert
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .normalization import GroupNorm, LayerNorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "SyncBatchNorm",
    "convert",
    "functional",
]

# After __all__: the fusion patterns come from convert()'s table, which reads it.
register_fuser_methods()
