"""Tensors shaped for the kernels' harder paths, and the low-precision error rule, shared by the norm tests."""

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


def channel_blocked_batch_norm_shape(dtype: torch.dtype) -> tuple[int, int, int]:
    """(N, C, L) for which the CPU's channels-first BatchNorm training passes go block by block.

    They do once the pass reads more than the L3 cache, N is at most 64 and
    a block's run of planes per sample is at least 12 KB (channels_per_block
    in csrc/cpu/batch_norm.cpp). L is odd, so that planes start off vector
    boundaries, and C is odd, so that the last block of channels is a partial
    one. Skips where the cache is too large to
    test this cheaply.
    """
    cache = fastopt._C._last_level_cache_bytes()
    item = torch.empty((), dtype=dtype).element_size()
    N, L = 3, (16 << 10) // item + 1  # 16 KB planes
    C = cache // (N * L * item) + 1  # x alone (the forward's pass) past the cache
    C += 1 - C % 2  # odd: blocks of 2^k planes leave a partial block
    if N * C * L > 1 << 25:
        pytest.skip(f"an L3 cache of {cache} bytes needs too large an input for the blocked path")
    return N, C, L


def assert_within_twice_torch_error(
    name: str,
    value: torch.Tensor,
    torch_value: torch.Tensor,
    exact: torch.Tensor,
    scale: float | None = None,
    units: float = 4,
) -> None:
    """fastopt's ``value`` at most twice as far from the float64 ``exact`` as torch's, plus
    ``units`` rounding units of ``scale`` (default: the largest magnitude of ``exact``), so that
    a torch result that happens to be exact leaves room for fastopt's own rounding."""
    assert value.dtype == torch_value.dtype and value.shape == torch_value.shape, name
    true = exact.double()
    err = (value.double() - true).abs().max().item()
    torch_err = (torch_value.double() - true).abs().max().item()
    scale = true.abs().max().item() if scale is None else scale
    assert err <= 2 * torch_err + units * torch.finfo(value.dtype).eps * scale, (name, err, torch_err)
