"""Drop-in ``torch.nn`` modules and functions backed by fastopt's kernels."""

from . import functional
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "functional"]
