"""Tensors shaped for the CUDA kernels' harder paths, shared by the norm tests."""

from __future__ import annotations

import torch


def unaligned(x: torch.Tensor) -> torch.Tensor:
    """x's values and strides (x dense) in a tensor whose data starts one element past an aligned address.

    The kernels then take their element-wise paths instead of 16-byte vector
    access. Autograd leaves must be made this way, not cloned from it: a clone
    or a layout change is a fresh, aligned allocation.
    """
    buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    out = buf[1:].as_strided(x.shape, x.stride())
    out.copy_(x.detach())
    assert out.data_ptr() % 16 != 0
    return out
