"""InstanceNorm1d/2d/3d: torch's modules with fastopt's fused kernels.

Instance normalization is GroupNorm with one channel per group. torch's
modules are kept whole (input checks, the unbatched case, ``state_dict``
versioning); only the normalization itself is replaced.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as F
from ._norm_functional import has_kernel


class _FusedInstanceNorm:
    """Mixin that replaces ``_InstanceNorm._apply_instance_norm``."""

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        if not (self.training or not self.track_running_stats) or not has_kernel(input):
            # Normalizing with the running estimates is a per-channel affine
            # map; and where fastopt has no kernel for the device, torch runs.
            return super()._apply_instance_norm(input)
        torch.nn.functional._verify_spatial_size(input.size())  # torch's ValueError
        y, mean, rstd = F.instance_norm(input, self.weight, self.bias, self.eps)
        if self.track_running_stats and self.momentum is not None:
            self._update_running_stats(input, mean, rstd)
        return y

    @torch.no_grad()
    def _update_running_stats(self, input: Tensor, mean: Tensor, rstd: Tensor) -> None:
        # As torch: each instance's mean and unbiased variance, averaged over
        # the batch, enter the running estimates with weight `momentum`. The
        # variance is recovered from rstd = 1 / sqrt(var + eps), in float64.
        count = input[0, 0].numel()
        var = rstd.double().pow(-2).sub_(self.eps).clamp_min_(0)
        unbiased = var * (count / (count - 1))  # count > 1, checked in training
        m = self.momentum
        self.running_mean.mul_(1 - m).add_(mean.mean(0).to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased.mean(0).to(self.running_var.dtype), alpha=m)


class InstanceNorm1d(_FusedInstanceNorm, torch.nn.InstanceNorm1d):
    """:class:`torch.nn.InstanceNorm1d` on fastopt's fused kernels."""


class InstanceNorm2d(_FusedInstanceNorm, torch.nn.InstanceNorm2d):
    """:class:`torch.nn.InstanceNorm2d` on fastopt's fused kernels."""


class InstanceNorm3d(_FusedInstanceNorm, torch.nn.InstanceNorm3d):
    """:class:`torch.nn.InstanceNorm3d` on fastopt's fused kernels."""
