"""Fake kernels of the dropout ops (their autograd is in csrc/autograd/dropout_autograd.cpp)."""

from __future__ import annotations

import torch

from .optim import _in_place_fake


def _dense(x: torch.Tensor) -> bool:
    """ATen's is_non_overlapping_and_dense (not a Python Tensor method): sorted by
    stride, each dim of size > 1 steps over exactly the dims inside it."""
    expected = 1
    for stride, size in sorted((st, n) for n, st in zip(x.shape, x.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


ops = torch.ops.fastopt


def _like(x: torch.Tensor) -> torch.Tensor:
    """An output as the ops allocate it (NOTE: [dropout memory format] in
    csrc/common/dropout_op.h): in a dense input's strides, else contiguous."""
    if not x.is_contiguous() and _dense(x):
        return torch.empty_like(x)  # preserve_format keeps a dense tensor's strides
    return x.new_empty(x.shape)


@torch.library.register_fake("fastopt::dropout")
def _dropout_fake(x: torch.Tensor, seed: torch.Tensor, p: float, group: int = 1) -> torch.Tensor:
    return _like(x)


@torch.library.register_fake("fastopt::dropout_add")
def _dropout_add_fake(
    x: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor | None, seed: torch.Tensor, p: float
) -> torch.Tensor:
    return _like(x)


torch.library.register_fake("fastopt::dropout_")(_in_place_fake)


# --- the 1-bit mask mode -------------------------------------------------------
# dropout_bits returns the mask as well (8 bytes per 64 elements); backward
# applies it with dropout_from_bits instead of redrawing it.


def _mask_bytes(numel: int) -> int:
    """Mirrors dropout_mask_bytes in csrc/common/dropout_op.h."""
    return (numel + 63) // 64 * 8


@torch.library.register_fake("fastopt::dropout_bits")
def _dropout_bits_fake(x: torch.Tensor, seed: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _like(x), x.new_empty((_mask_bytes(x.numel()),), dtype=torch.uint8)


@torch.library.register_fake("fastopt::dropout_from_bits")
def _dropout_from_bits_fake(grad: torch.Tensor, bits: torch.Tensor, p: float) -> torch.Tensor:
    return _like(grad)
