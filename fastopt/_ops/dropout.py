"""Fake kernels and autograd of the dropout ops."""

from __future__ import annotations

from typing import Any

import torch

from .optim import _in_place_fake

ops = torch.ops.fastopt

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


# --- the 1-bit mask mode -------------------------------------------------------
# dropout_bits returns the mask as well (8 bytes per 64 elements); backward
# applies it with dropout_from_bits instead of redrawing it.


def _mask_bytes(numel: int) -> int:
    """Mirrors dropout_mask_bytes in csrc/common/dropout_op.h."""
    return (numel + 63) // 64 * 8


@torch.library.register_fake("fastopt::dropout_bits")
def _dropout_bits_fake(x: torch.Tensor, seed: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), x.new_empty((_mask_bytes(x.numel()),), dtype=torch.uint8)


@torch.library.register_fake("fastopt::dropout_from_bits")
def _dropout_from_bits_fake(grad: torch.Tensor, bits: torch.Tensor, p: float) -> torch.Tensor:
    return grad.new_empty(grad.shape)


def _dropout_bits_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    _, _, ctx.p = inputs
    _, bits = output
    ctx.save_for_backward(bits)
    ctx.mark_non_differentiable(bits)


def _dropout_bits_backward(ctx: Any, grad: torch.Tensor, _grad_bits: Any) -> tuple:
    (bits,) = ctx.saved_tensors
    return ops.dropout_from_bits(grad, bits, ctx.p), None, None


torch.library.register_autograd(
    "fastopt::dropout_bits", _dropout_bits_backward, setup_context=_dropout_bits_setup_context
)


# Backward of applying a stored mask is applying it again (it is linear in grad).
def _dropout_from_bits_setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    _, bits, ctx.p = inputs
    ctx.save_for_backward(bits)


def _dropout_from_bits_backward(ctx: Any, grad: torch.Tensor) -> tuple:
    (bits,) = ctx.saved_tensors
    return ops.dropout_from_bits(grad, bits, ctx.p), None, None


torch.library.register_autograd(
    "fastopt::dropout_from_bits", _dropout_from_bits_backward, setup_context=_dropout_from_bits_setup_context
)
