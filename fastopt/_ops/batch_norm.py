"""Fake kernels of the BatchNorm ops (their autograd is in csrc/autograd/batch_norm_autograd.cpp).

Training runs on ``batch_norm_fwd`` (statistics and normalization in one op)
and its backward ``batch_norm_bwd``; evaluation runs on ``batch_norm_apply``
with the running statistics. SyncBatchNorm composes ``batch_norm_stats``,
``batch_norm_apply``, ``batch_norm_bwd_reduce`` and ``batch_norm_bwd_elemt``
with all_reduce in between (fastopt/nn/_batch_norm_functional.py).
"""

from __future__ import annotations

import torch

from .norm import _like_native, _opmath_dtype
from .optim import _in_place_fake

ops = torch.ops.fastopt


def _channel_stat(x: torch.Tensor) -> torch.Tensor:
    """A [C] statistic of x in its arithmetic type."""
    return x.new_empty((x.size(1),), dtype=_opmath_dtype(x.dtype))


def _param_grad(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((x.size(1),), dtype=weight.dtype if weight is not None else x.dtype)


@torch.library.register_fake("fastopt::batch_norm_fwd")
def _batch_norm_fwd_fake(x, weight, bias, eps, running_mean=None, running_var=None, momentum=0.0):
    return _like_native(x), _channel_stat(x), _channel_stat(x), _channel_stat(x)


@torch.library.register_fake("fastopt::batch_norm_bwd")
def _batch_norm_bwd_fake(grad_out, x, mean, invstd, weight):
    return _like_native(x), _param_grad(x, weight), _param_grad(x, weight)


@torch.library.register_fake("fastopt::batch_norm_stats")
def _batch_norm_stats_fake(x):
    return _channel_stat(x), _channel_stat(x)


@torch.library.register_fake("fastopt::batch_norm_apply")
def _batch_norm_apply_fake(x, mean, invstd, weight, bias):
    return _like_native(x)


@torch.library.register_fake("fastopt::batch_norm_bwd_reduce")
def _batch_norm_bwd_reduce_fake(grad_out, x, mean):
    return _channel_stat(x), _channel_stat(x)


torch.library.register_fake("fastopt::batch_norm_update_stats_")(_in_place_fake)


@torch.library.register_fake("fastopt::batch_norm_bwd_elemt")
def _batch_norm_bwd_elemt_fake(grad_out, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
    return _like_native(x)


def param_grads(
    want_weight: bool,
    want_bias: bool,
    sum_dy: torch.Tensor,
    sum_dy_xmu: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """grad_weight = sum dy * (x - mean) * invstd and grad_bias = sum dy, each only where wanted."""
    dtype = weight.dtype if weight is not None else sum_dy.dtype
    grad_weight = (sum_dy_xmu * invstd).to(dtype) if want_weight else None
    grad_bias = sum_dy.to(dtype) if want_bias else None
    return grad_weight, grad_bias
