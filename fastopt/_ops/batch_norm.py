"""Fake kernels and autograd of the BatchNorm ops.

Training runs on ``batch_norm_fwd`` (statistics and normalization in one op)
and its backward ``batch_norm_bwd``; evaluation runs on ``batch_norm_apply``
with the running statistics. SyncBatchNorm composes ``batch_norm_stats``,
``batch_norm_apply``, ``batch_norm_bwd_reduce`` and ``batch_norm_bwd_elemt``
with all_reduce in between (fastopt/nn/_batch_norm_functional.py).
"""

from __future__ import annotations

from typing import Any

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
def _batch_norm_fwd_fake(x, weight, bias, eps):
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


# ---------------------------------------------------------------- training
def _fwd_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, _bias, _eps = inputs
    _y, mean, invstd, _var = output
    # Only x and the per-channel statistics; weight is the module's parameter.
    ctx.save_for_backward(x, mean, invstd, weight)


def _fwd_backward(ctx: Any, grad_y: torch.Tensor, _grad_mean: Any, _grad_invstd: Any, _grad_var: Any) -> tuple:
    x, mean, invstd, weight = ctx.saved_tensors
    if ctx.needs_input_grad[0]:
        grad_x, grad_weight, grad_bias = ops.batch_norm_bwd(grad_y, x, mean, invstd, weight)
        grad_weight = grad_weight if ctx.needs_input_grad[1] else None
        grad_bias = grad_bias if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None
    # No dx wanted (a frozen input, e.g. the first layer): only the reduction pass.
    sum_dy, sum_dy_xmu = ops.batch_norm_bwd_reduce(grad_y, x, mean)
    want_weight, want_bias = ctx.needs_input_grad[1:3]
    return (None, *param_grads(want_weight, want_bias, sum_dy, sum_dy_xmu, invstd, weight), None)


torch.library.register_autograd("fastopt::batch_norm_fwd", _fwd_backward, setup_context=_fwd_setup_context)


# ---------------------------------------------------------------- evaluation
# y = (x - mean) * invstd * weight + bias with mean and invstd held fixed (the
# running statistics, buffers without gradients): dx = dy * invstd * weight,
# which is the same affine map applied to dy.
def _apply_setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, mean, invstd, weight, _bias = inputs
    ctx.save_for_backward(x if any(ctx.needs_input_grad[3:5]) else None, mean, invstd, weight)


def _apply_backward(ctx: Any, grad_y: torch.Tensor) -> tuple:
    x, mean, invstd, weight = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = ops.batch_norm_apply(grad_y, torch.zeros_like(mean), invstd, weight, None)
    grad_weight = grad_bias = None
    want_weight, want_bias = ctx.needs_input_grad[3:5]
    if want_weight or want_bias:
        sum_dy, sum_dy_xmu = ops.batch_norm_bwd_reduce(grad_y, x, mean)
        grad_weight, grad_bias = param_grads(want_weight, want_bias, sum_dy, sum_dy_xmu, invstd, weight)
    return grad_x, None, None, grad_weight, grad_bias


torch.library.register_autograd("fastopt::batch_norm_apply", _apply_backward, setup_context=_apply_setup_context)
