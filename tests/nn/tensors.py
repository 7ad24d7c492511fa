"""Tensors shaped for the CUDA kernels' harder paths, shared by the norm tests."""

from __future__ import annotations

import pytest
import torch

import fastopt


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


def dropout_scaled(t: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """t / keep_prob in t's arithmetic type (float32 for 16-bit t), as the dropout kernels compute survivors.

    The divisor is a tensor on t's device on purpose: torch's CUDA division by
    a Python scalar multiplies by the scalar's reciprocal, which is not always
    the correctly rounded quotient.
    """
    wide = t if t.dtype == torch.float64 else t.float()
    return (wide / torch.full_like(wide, keep_prob)).to(t.dtype)


def streamed_numel(dtype: torch.dtype) -> int:
    """Elements that put an output of `dtype` past the CPU kernels' threshold for non-temporal stores.

    The kernels stream an output once four tensors of its size exceed the L3
    cache (stream_output in csrc/cpu/output_cache.h). Skips where the cache is
    too large to test this cheaply.
    """
    cache = fastopt._C._last_level_cache_bytes()
    numel = cache // (4 * torch.empty((), dtype=dtype).element_size()) + 1
    if numel > 1 << 25:
        pytest.skip(f"an L3 cache of {cache} bytes needs too large an input for the streamed path")
    return numel
