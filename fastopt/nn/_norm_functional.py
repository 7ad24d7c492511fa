"""Functional forms of fastopt's modules.

GroupNorm, LayerNorm and InstanceNorm all run on ``torch.ops.fastopt.group_norm_fwd``
(autograd and fake kernels in ``fastopt/_ops.py``):

* GroupNorm: x of shape (N, C, *) in G groups of C / G channels;
* LayerNorm: x viewed as (rows, K) over its K trailing elements, one group
  of K "channels" per row, so that each element has its own weight;
* InstanceNorm: GroupNorm with one channel per group.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

# Codes of the op's `activation` argument.
_ACTIVATIONS = {None: 0, "relu": 1, "silu": 2}
_TORCH_ACTIVATIONS = {None: lambda t: t, "relu": torch.relu, "silu": torch.nn.functional.silu}


def _devices_with_kernels() -> frozenset[str]:
    """Device types for which this build registered the group-norm kernels.

    Looked up once, at import: the set is fixed by the build, and a Python set
    membership test is something torch.compile traces without a graph break.
    """
    return frozenset(
        device
        for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if torch._C._dispatch_has_kernel_for_dispatch_key("fastopt::group_norm_fwd", key)
    )


_KERNEL_DEVICES = _devices_with_kernels()


def has_kernel(input: Tensor) -> bool:
    """Whether fastopt's fused kernels serve ``input``'s device.

    CPU always, CUDA when the extension was built with it. On any other
    device (meta, mps, or CUDA under a CPU-only build) the modules and
    functions run torch's implementation instead, so that a model (or one
    converted by :func:`fastopt.nn.convert`) keeps working when moved there.
    """
    return input.device.type in _KERNEL_DEVICES


def check_activation(activation: Optional[str]) -> Optional[str]:
    """Return ``activation`` if fastopt can fuse it (None, "relu", "silu"), else raise ValueError."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu' or 'silu', got {activation!r}")
    return activation


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: Optional[str] = None,
) -> Tensor:
    """``torch.nn.functional.group_norm``, optionally followed by a fused activation.

    ``activation`` is None, ``"relu"`` or ``"silu"``; it is applied in the same
    pass as the normalization, and its backward is fused into the norm's.
    Contiguous and channels-last inputs run natively; the output keeps the
    input's memory format.
    """
    code = _ACTIVATIONS[check_activation(activation)]
    if not has_kernel(input):
        return _TORCH_ACTIVATIONS[activation](torch.nn.functional.group_norm(input, num_groups, weight, bias, eps))
    return torch.ops.fastopt.group_norm_fwd(input, weight, bias, num_groups, eps, code)[0]


def layer_norm(
    input: Tensor,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.layer_norm`` on fastopt's group-norm kernels."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or input.dim() < k or tuple(input.shape[input.dim() - k :]) != shape:
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape [*, "
            f"{', '.join(str(s) for s in shape)}], but got input of size {list(input.shape)}"
        )
    if not has_kernel(input):
        return torch.nn.functional.layer_norm(input, shape, weight, bias, eps)
    rows = input.reshape(-1, math.prod(shape))
    y = torch.ops.fastopt.group_norm_fwd(rows, weight, bias, 1, eps, 0)[0]
    return y.view(input.shape)


def instance_norm(
    input: Tensor,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Instance normalization with each sample's statistics.

    Returns ``(y, mean, rstd)``, the statistics of shape (N, C), from which
    :class:`fastopt.nn.InstanceNorm2d` updates its running estimates.
    """
    return torch.ops.fastopt.group_norm_fwd(input, weight, bias, input.size(1), eps, 0)
