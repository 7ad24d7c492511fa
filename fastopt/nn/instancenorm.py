"""InstanceNorm1d/2d/3d: torch's modules with fastopt's fused kernels.

Instance normalization is GroupNorm with one channel per group. torch's
modules are kept whole (input checks, the unbatched case, ``state_dict``
versioning); only the normalization itself is replaced.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as F
from ._scripting import ScriptsAsTorch
from ._torch_function import fx_leaf, fx_tracing


class _FusedInstanceNorm(ScriptsAsTorch):
    """Mixin that replaces ``_InstanceNorm._apply_instance_norm``."""

    @fx_leaf
    def forward(self, input: Tensor) -> Tensor:
        if fx_tracing(input):
            # torch's forward checks the input's dimensions and handles an
            # unbatched one, neither possible on a proxy: a traced graph
            # records the batched call.
            return self._apply_instance_norm(input)
        return super().forward(input)

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        # torch's own method, calling fastopt's instance_norm: momentum=None
        # becomes 0, which leaves the running estimates as they are.
        return F.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )


class InstanceNorm1d(_FusedInstanceNorm, torch.nn.InstanceNorm1d):
    """:class:`torch.nn.InstanceNorm1d` on fastopt's fused kernels."""


class InstanceNorm2d(_FusedInstanceNorm, torch.nn.InstanceNorm2d):
    """:class:`torch.nn.InstanceNorm2d` on fastopt's fused kernels."""


class InstanceNorm3d(_FusedInstanceNorm, torch.nn.InstanceNorm3d):
    """:class:`torch.nn.InstanceNorm3d` on fastopt's fused kernels."""
