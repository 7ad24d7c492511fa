"""The 1-bit mask mode of fastopt dropout (``mask="bits"``)."""

from __future__ import annotations

import pytest
import torch

import fastopt.nn.functional as F
from fastopt import nn

from ..cpu_isa import cpu_capability, supported_isas
from .tensors import dropout_scaled

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _nonzero_randn(*shape: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.randn(shape, device=device).to(dtype)
    return torch.where(x == 0, torch.ones_like(x), x)


def unpack_bits(bits: torch.Tensor, n: int) -> torch.Tensor:
    """Bit i % 8 of byte i // 8, as a bool tensor of n elements (the documented layout)."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    return ((bits.unsqueeze(1) >> shifts) & 1).flatten()[:n].bool()


@pytest.mark.parametrize("dtype", DTYPES)
# 1 element, a partial Philox block, several 64K-element CPU chunks with a tail.
@pytest.mark.parametrize("n", [1, 100, 3 * 2**16 + 17])
def test_same_mask_as_recompute_mode_and_bits_match_it(device, dtype, n):
    """Both modes draw the same mask from the same generator state; the bits are that mask."""
    x = _nonzero_randn(n, device=device, dtype=dtype)
    torch.manual_seed(7)
    expected = F.dropout(x, 0.3)
    torch.manual_seed(7)
    seed = torch.randint(2**62, (2,), device=device, dtype=torch.int64)
    y, bits = torch.ops.fastopt.dropout_bits(x, seed, 0.3)
    assert torch.equal(y, expected)
    assert bits.dtype == torch.uint8 and bits.numel() == (n + 63) // 64 * 8
    assert torch.equal(unpack_bits(bits, n), expected != 0)
    torch.manual_seed(7)
    assert torch.equal(F.dropout(x, 0.3, mask="bits"), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_applies_the_forward_mask(device, dtype):
    x = _nonzero_randn(5000, device=device, dtype=dtype).requires_grad_()
    y = F.dropout(x, 0.4, mask="bits")
    grad = _nonzero_randn(5000, device=device, dtype=dtype)
    y.backward(grad)
    kept = y != 0
    # Survivors are grad / (1 - p) in the arithmetic type (float32 for 16-bit grads).
    scaled = dropout_scaled(grad, 0.6)
    expected = torch.where(kept, scaled, torch.zeros_like(grad))
    assert torch.equal(x.grad, expected)


def test_saved_tensors_hold_one_bit_per_element(device):
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    n = 4096
    x = torch.randn(n, device=device, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = F.dropout(x, 0.5, mask="bits")
    assert len(saved) == 1
    assert saved[0].dtype == torch.uint8 and saved[0].numel() * 8 == n  # 1 bit per element
    y.sum().backward()


def test_gradcheck(device):
    x = torch.randn(70, device=device, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor([3, 4], device=device)
    # The op's first output; its mask is fixed by the seed, so the function is linear.
    assert torch.autograd.gradcheck(lambda t: torch.ops.fastopt.dropout_bits(t, seed, 0.5)[0], (x,))
    _, bits = torch.ops.fastopt.dropout_bits(x.detach(), seed, 0.5)
    assert torch.autograd.gradgradcheck(lambda t: torch.ops.fastopt.dropout_from_bits(t, bits, 0.5), (x,))


def test_non_contiguous_inplace_and_module(device):
    x = _nonzero_randn(64, 33, device=device).t()  # non-contiguous
    torch.manual_seed(1)
    expected = F.dropout(x, 0.5)
    torch.manual_seed(1)
    module = nn.Dropout(0.5, mask="bits")
    assert torch.equal(module(x), expected)
    assert "mask='bits'" in repr(module)
    torch.manual_seed(1)
    y = x.clone()
    assert F.dropout(y, 0.5, inplace=True, mask="bits") is y
    assert torch.equal(y, expected)
    module.eval()
    assert module(x) is x


def test_every_isa_packs_the_same_bits():
    x = _nonzero_randn(100003, device="cpu")
    seed = torch.tensor([11, 12])
    results = []
    for isa in supported_isas():
        with cpu_capability(isa):
            y, bits = torch.ops.fastopt.dropout_bits(x, seed, 0.5)
            results.append((y, bits, torch.ops.fastopt.dropout_from_bits(x, bits, 0.5)))
    for y, bits, dx in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(bits[: 100003 // 8], results[0][1][: 100003 // 8])
        assert torch.equal(dx, results[0][2])


def test_bad_input(device):
    x = torch.randn(100, device=device)
    bits = torch.zeros(16, dtype=torch.uint8, device=device)
    with pytest.raises(ValueError, match="mask must be one of"):
        F.dropout(x, 0.5, mask="bytes")
    with pytest.raises(ValueError, match="mask must be one of"):
        nn.Dropout(0.5, mask="none")
    with pytest.raises(TypeError, match="uint8"):
        torch.ops.fastopt.dropout_from_bits(x, bits.int(), 0.5)
    with pytest.raises(ValueError, match="16 bytes"):
        torch.ops.fastopt.dropout_from_bits(x, bits[:8], 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        torch.ops.fastopt.dropout_from_bits(x, bits, -0.1)
