"""The dropout masks against NOTE: [dropout stream] (csrc/common/philox.h), recomputed in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ..cpu_isa import cpu_capability, supported_isas
from .test_dropout_bits import unpack_bits

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LOW32 = np.uint64(0xFFFFFFFF)
_TIE_COUNTER = np.uint64(1 << 63)


def _philox(counter: np.ndarray, seed: tuple[int, int]) -> list[np.ndarray]:
    """Philox 4x32-10 of 64-bit counters (words 0 and 1) under the key and offset of ``seed``."""
    key, offset = (s % 2**64 for s in seed)
    c = [counter & _LOW32, counter >> np.uint64(32)]
    c += [np.full_like(counter, offset & 0xFFFFFFFF), np.full_like(counter, offset >> 32)]
    k0, k1 = key & 0xFFFFFFFF, key >> 32
    for _ in range(10):
        p0, p1 = c[0] * _M0, c[2] * _M1  # exact: both factors are below 2^32
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0),
            p1 & _LOW32,
            (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
            p0 & _LOW32,
        ]
        k0, k1 = (k0 + _W0) % 2**32, (k1 + _W1) % 2**32
    return c


def _threshold(p: float) -> int:
    return min(int(p * 2**32 + 0.5), 0xFFFFFFFF)


def _cpu_keep(seed: tuple[int, int], n: int, p: float) -> tuple[np.ndarray, int]:
    """keep(j) of the CPU layout, and how many indices the tie-break bits decided."""
    j = np.arange(n, dtype=np.uint64)
    counter = (j // np.uint64(128)) * np.uint64(16) + j % np.uint64(16)
    words = np.stack(_philox(counter, seed))
    word = words[(j % np.uint64(128)) // np.uint64(32), np.arange(n)]
    high = np.where(j % np.uint64(32) < 16, word & np.uint64(0xFFFF), word >> np.uint64(16))
    low = _philox(j | _TIE_COUNTER, seed)[0] & np.uint64(0xFFFF)
    t = _threshold(p)
    u = (high << np.uint64(16)) | low
    return u >= np.uint64(t), int((high == np.uint64(t >> 16)).sum())


def _cuda_keep(seed: tuple[int, int], n: int, p: float) -> np.ndarray:
    j = np.arange(n, dtype=np.uint64)
    counter = (j // np.uint64(64)) * np.uint64(16) + j % np.uint64(16)
    words = np.stack(_philox(counter, seed))
    word = words[(j % np.uint64(64)) // np.uint64(16), np.arange(n)]
    return word >= np.uint64(_threshold(p))


def _reference(device: str, seed: tuple[int, int], n: int, p: float) -> np.ndarray:
    if device == "cpu":
        keep, ties = _cpu_keep(seed, n, p)
        # About n / 65536 ties: the draw of the tie-break bits is exercised.
        assert ties > 0
        return keep
    return _cuda_keep(seed, n, p)


def _isas(device: str) -> list[str]:
    return supported_isas() if device == "cpu" else ["default"]


# Not a multiple of a Philox block, several 64K-element CPU chunks; negative
# int64 seed words (torch draws them as int64).
N = 3 * 2**18 + 77
SEED = (-0x1234567890ABCDE, 0x0FEDCBA987654321)


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_element_mask_is_the_documented_stream(device, p):
    expected = torch.from_numpy(_reference(device, SEED, N, p))
    x = torch.ones(N, device=device)
    seed = torch.tensor(SEED, device=device)
    for isa in _isas(device):
        with cpu_capability(isa):
            y, bits = torch.ops.fastopt.dropout_bits(x, seed, p)
        assert torch.equal(unpack_bits(bits.cpu(), N), expected), isa
        assert torch.equal(y.cpu() != 0, expected), isa
        assert torch.equal(y.cpu()[expected], torch.full((int(expected.sum()),), 1 / (1 - p))), isa


def test_channel_mask_is_the_documented_stream(device):
    """Channel-wise dropout reads mask index j = element index / channel size."""
    channels, size, p = 2**17 + 3, 5, 0.5
    expected = torch.from_numpy(_reference(device, SEED, channels, p))
    x = torch.ones(channels, size, device=device)
    for isa in _isas(device):
        with cpu_capability(isa):
            y = torch.ops.fastopt.dropout(x, torch.tensor(SEED, device=device), p, size)
        assert torch.equal(y.cpu() != 0, expected.unsqueeze(1).expand(channels, size)), isa


@pytest.mark.parametrize("channels", [3, 259])
def test_channels_last_channel_mask_is_the_documented_stream(device, channels):
    """Channel-wise dropout of an (N, C, S) input stored as (N, S, C) reads mask index n * C + c,
    as its contiguous copy does (the CPU takes this layout natively: NOTE: [dropout memory format])."""
    batch, size, p = 2**17 // channels + 2, 3, 0.5
    expected = torch.from_numpy(_reference(device, SEED, batch * channels, p)).view(batch, channels, 1)
    # Rows of 3 or 259 channels: samples straddle Philox blocks, and the
    # 64K-element CPU chunks begin inside rows.
    x = torch.ones(batch, size, channels, device=device).transpose(1, 2)
    for isa in _isas(device):
        with cpu_capability(isa):
            y = torch.ops.fastopt.dropout(x, torch.tensor(SEED, device=device), p, size)
        assert y.stride() == x.stride(), isa
        assert torch.equal(y.cpu() != 0, expected.expand(batch, channels, size)), isa
