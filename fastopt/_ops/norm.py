"""Fake kernels of the GroupNorm family ops (GroupNorm, LayerNorm, InstanceNorm).

Their autograd is in csrc/autograd/group_norm_autograd.cpp.
"""

from __future__ import annotations

import math

import torch

ops = torch.ops.fastopt

def _opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _is_channels_last(x: torch.Tensor) -> bool:
    """Mirrors is_channels_last in csrc/cpu/group_norm.cpp: dense, channel stride 1."""
    if x.dim() < 3 or x.stride(1) != 1:
        return False
    expected = x.size(1)
    for d in range(x.dim() - 1, 1, -1):
        if x.size(d) != 1 and x.stride(d) != expected:
            return False
        expected *= x.size(d)
    return x.size(0) == 1 or x.stride(0) == expected


def _like_native(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor in the layout the kernels write: x's own when native, else contiguous."""
    if x.is_contiguous() or _is_channels_last(x):
        return torch.empty_like(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _like_output(x: torch.Tensor, normalized_ndim: int) -> torch.Tensor:
    """An empty y or dx as the op makes it: contiguous for a layer norm (its rows), else as _like_native."""
    if normalized_ndim:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    return _like_native(x)


def _samples_and_channels(x: torch.Tensor, normalized_ndim: int) -> tuple[int, int]:
    """(N, C) as the kernels count them: x's first two sizes, or a layer norm's rows and row length."""
    if normalized_ndim == 0:
        return x.size(0), x.size(1)
    lead = x.dim() - normalized_ndim
    return math.prod(x.shape[:lead]), math.prod(x.shape[lead:])


@torch.library.register_fake("fastopt::group_norm_fwd")
def _group_norm_fwd_fake(x, weight, bias, groups, eps, activation=0, normalized_ndim=0):
    samples, _ = _samples_and_channels(x, normalized_ndim)
    stats = x.new_empty((samples, groups), dtype=_opmath_dtype(x.dtype))
    return _like_output(x, normalized_ndim), stats, torch.empty_like(stats)


@torch.library.register_fake("fastopt::group_norm_bwd")
def _group_norm_bwd_fake(grad_out, x, mean, rstd, weight, bias, groups, activation=0, normalized_ndim=0):
    param_dtype = weight.dtype if weight is not None else x.dtype
    _, channels = _samples_and_channels(x, normalized_ndim)
    grad_weight = x.new_empty((channels,), dtype=param_dtype)
    return _like_output(x, normalized_ndim), grad_weight, torch.empty_like(grad_weight)
