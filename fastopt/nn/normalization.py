"""GroupNorm and LayerNorm: torch's modules with fastopt's fused kernels."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import functional as F
from ._norm_functional import check_activation
from ._scripting import ScriptsAsTorch
from ._torch_function import fx_leaf


class GroupNorm(torch.nn.GroupNorm, ScriptsAsTorch):
    """:class:`torch.nn.GroupNorm` with fused kernels and an optional fused activation.

    Same arguments, defaults, validation and ``state_dict`` as torch's module,
    plus ``activation`` (None, ``"relu"`` or ``"silu"``), applied in the same
    pass: ``GroupNorm(32, C, activation="silu")`` is the GroupNorm + SiLU block
    of diffusion U-Nets in one kernel, forward and backward.
    """

    # A class-level default, so that a torch GroupNorm swapped in by
    # ``fastopt.nn.convert`` (which skips ``__init__``) has no activation.
    activation: Optional[str] = None

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        activation: Optional[str] = None,
        **kwargs,
    ) -> None:
        # kwargs: keyword-only options of the installed torch (``bias`` in recent releases).
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, **kwargs)
        self.activation = check_activation(activation)

    @fx_leaf
    def forward(self, input: Tensor) -> Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps, self.activation)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra if self.activation is None else f"{extra}, activation={self.activation!r}"

    def __prepare_scriptable__(self) -> torch.nn.Module:
        if self.activation is not None:
            raise RuntimeError(
                f"fastopt.nn.GroupNorm(activation={self.activation!r}) cannot be scripted: torch's GroupNorm, "
                "which torch.jit.script compiles in its place, has no fused activation; script a GroupNorm "
                "without activation followed by the activation module instead"
            )
        return super().__prepare_scriptable__()


class LayerNorm(torch.nn.LayerNorm, ScriptsAsTorch):
    """:class:`torch.nn.LayerNorm` on fastopt's fused kernels; same arguments and ``state_dict``."""

    @fx_leaf
    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
