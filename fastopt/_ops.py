"""Python side of the ``torch.ops.fastopt`` operators.

The schemas and the CPU/CUDA kernels are registered in C++ (csrc/). Here each
op gets its fake (meta) kernel, which tells torch.compile what the op does to
shapes without running it.
"""

from __future__ import annotations

from typing import Any

import torch

ops = torch.ops.fastopt

# Ops that only write their inputs in place and return nothing, like ATen's
# _fused_adam_: their outputs are their (already allocated) arguments.
IN_PLACE_OPS = (
    "fastopt::adam_",
    "fastopt::adam_.tensor_lr",
    "fastopt::rmsprop_",
    "fastopt::rmsprop_.tensor_lr",
    "fastopt::ema_",
    "fastopt::sgd_",
    "fastopt::sgd_.tensor_lr",
    "fastopt::adagrad_",
    "fastopt::adagrad_.tensor_lr",
)


def _in_place_fake(*args: Any, **kwargs: Any) -> None:
    return None


for _name in IN_PLACE_OPS:
    torch.library.register_fake(_name)(_in_place_fake)


# --- dropout -----------------------------------------------------------------
# The ops return contiguous tensors (they work in the logical element order),
# hence new_empty rather than empty_like, which would copy x's strides.


@torch.library.register_fake("fastopt::dropout")
def _dropout_fake(x: torch.Tensor, seed: torch.Tensor, p: float, group: int = 1) -> torch.Tensor:
    return x.new_empty(x.shape)


@torch.library.register_fake("fastopt::dropout_add")
def _dropout_add_fake(
    x: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor | None, seed: torch.Tensor, p: float
) -> torch.Tensor:
    return x.new_empty(x.shape)


torch.library.register_fake("fastopt::dropout_")(_in_place_fake)


# Backward of dropout is dropout of the gradient under the same seed: the
# mask is regenerated in the pass that computes dx, and the only tensor saved
# is the 2-word seed, never a per-element mask.
def _dropout_setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    _, seed, ctx.p, ctx.group = inputs
    ctx.save_for_backward(seed)


def _dropout_backward(ctx: Any, grad: torch.Tensor) -> tuple:
    (seed,) = ctx.saved_tensors
    return ops.dropout(grad, seed, ctx.p, ctx.group), None, None, None


torch.library.register_autograd("fastopt::dropout", _dropout_backward, setup_context=_dropout_setup_context)


def _dropout_add_setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    _, _, bias, seed, ctx.p = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(seed)


def _dropout_add_backward(ctx: Any, grad: torch.Tensor) -> tuple:
    (seed,) = ctx.saved_tensors
    grad_x = ops.dropout(grad, seed, ctx.p, 1)
    # bias is broadcast over every leading dimension of x: its gradient is
    # grad_x summed over them.
    grad_bias = grad_x.reshape(-1, grad_x.shape[-1]).sum(0) if ctx.has_bias else None
    return grad_x, grad, grad_bias, None, None


torch.library.register_autograd(
    "fastopt::dropout_add", _dropout_add_backward, setup_context=_dropout_add_setup_context
)


# ---------------------------------------------------------------------------
# Normalization (GroupNorm, LayerNorm, InstanceNorm share these two ops).


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


@torch.library.register_fake("fastopt::group_norm_fwd")
def _group_norm_fwd_fake(x, weight, bias, groups, eps, activation=0):
    stats = x.new_empty((x.size(0), groups), dtype=_opmath_dtype(x.dtype))
    return _like_native(x), stats, torch.empty_like(stats)


@torch.library.register_fake("fastopt::group_norm_bwd")
def _group_norm_bwd_fake(grad_out, x, mean, rstd, weight, bias, groups, activation=0):
    param_dtype = weight.dtype if weight is not None else x.dtype
    grad_weight = x.new_empty((x.size(1),), dtype=param_dtype)
    return _like_native(x), grad_weight, torch.empty_like(grad_weight)


def _group_norm_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, bias, groups, _eps, activation = inputs
    _y, mean, rstd = output
    # Only x and the per-group statistics are saved; weight and bias are the
    # module's parameters, held anyway.
    ctx.save_for_backward(x, mean, rstd, weight, bias)
    ctx.groups = groups
    ctx.activation = activation


def _group_norm_backward(ctx: Any, grad_y: torch.Tensor, _grad_mean: Any, _grad_rstd: Any):
    x, mean, rstd, weight, bias = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = ops.group_norm_bwd(
        grad_y, x, mean, rstd, weight, bias, ctx.groups, ctx.activation
    )
    # The op returns [C]; LayerNorm's weight has the normalized shape.
    grad_weight = grad_weight.view(weight.shape) if weight is not None and ctx.needs_input_grad[1] else None
    grad_bias = grad_bias.view(bias.shape) if bias is not None and ctx.needs_input_grad[2] else None
    return grad_x, grad_weight, grad_bias, None, None, None


torch.library.register_autograd(
    "fastopt::group_norm_fwd", _group_norm_backward, setup_context=_group_norm_setup_context
)
