"""Drop-in ``torch.nn`` dropout modules backed by fastopt's counter-based kernels.

Each class subclasses its torch counterpart, so the constructor, validation,
``repr``, ``state_dict`` and ``isinstance`` checks are torch's; only
``forward`` changes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as F
from ._dropout_functional import check_mask_mode
from ._scripting import ScriptsAsTorch
from ._torch_function import fx_leaf

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d"]


class Dropout(torch.nn.Dropout, ScriptsAsTorch):
    """:class:`torch.nn.Dropout` whose mask is regenerated in backward, not saved.

    Same arguments as torch's module, plus ``mask``: ``"recompute"`` (default)
    or ``"bits"``, which saves the mask bit-packed for backward instead (see
    :func:`fastopt.nn.functional.dropout`).
    """

    # Class-level default, for modules swapped in by fastopt.nn.convert.
    mask: str = "recompute"

    def __init__(self, p: float = 0.5, inplace: bool = False, *, mask: str = "recompute") -> None:
        super().__init__(p, inplace)
        self.mask = check_mask_mode(mask)

    @fx_leaf
    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(input, self.p, self.training, self.inplace, mask=self.mask)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra if self.mask == "recompute" else f"{extra}, mask={self.mask!r}"


class Dropout1d(torch.nn.Dropout1d, ScriptsAsTorch):
    """:class:`torch.nn.Dropout1d` (channel-wise) on fastopt's kernels."""

    @fx_leaf
    def forward(self, input: Tensor) -> Tensor:
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(torch.nn.Dropout2d, ScriptsAsTorch):
    """:class:`torch.nn.Dropout2d` (channel-wise) on fastopt's kernels."""

    @fx_leaf
    def forward(self, input: Tensor) -> Tensor:
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(torch.nn.Dropout3d, ScriptsAsTorch):
    """:class:`torch.nn.Dropout3d` (channel-wise) on fastopt's kernels."""

    @fx_leaf
    def forward(self, input: Tensor) -> Tensor:
        return F.dropout3d(input, self.p, self.training, self.inplace)
