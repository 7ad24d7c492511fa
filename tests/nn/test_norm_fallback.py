"""Devices without fastopt's group-norm kernels run torch's implementation.

The GroupNorm family has no CUDA kernels yet, so a model moved to such a
device (or converted with fastopt.nn.convert) must keep working. CPU stands in
for that device here by hiding its kernels.
"""

import pytest
import torch

import fastopt.nn as fnn
from fastopt.nn import _norm_functional


@pytest.fixture
def no_kernels(monkeypatch):
    monkeypatch.setattr(_norm_functional, "_KERNEL_DEVICES", frozenset())


def _check_same_as_torch(fast: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor, act=lambda t: t) -> None:
    ref.load_state_dict(fast.state_dict())
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fast(x1), act(ref(x2))
    assert torch.equal(y1, y2)  # the very same computation: torch's
    dy = torch.randn_like(y1)
    y1.backward(dy)
    y2.backward(dy)
    assert torch.equal(x1.grad, x2.grad)
    for p1, p2 in zip(fast.parameters(), ref.parameters()):
        assert torch.equal(p1.grad, p2.grad)
    for b1, b2 in zip(fast.buffers(), ref.buffers()):
        assert torch.equal(b1, b2)


def test_modules_fall_back_to_torch(no_kernels):
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5, 4)
    _check_same_as_torch(fnn.GroupNorm(4, 8, activation="silu"), torch.nn.GroupNorm(4, 8), x, torch.nn.functional.silu)
    _check_same_as_torch(fnn.LayerNorm([5, 4]), torch.nn.LayerNorm([5, 4]), x)
    _check_same_as_torch(
        fnn.InstanceNorm2d(8, affine=True, track_running_stats=True),
        torch.nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
        x,
    )


def test_meta_tensors_take_the_fallback():
    # No fastopt kernel is registered for meta; shapes still propagate through torch's.
    x = torch.randn(2, 4, 3, device="meta")
    assert fnn.GroupNorm(2, 4, activation="relu").to("meta")(x).shape == x.shape
    assert fnn.LayerNorm(3).to("meta")(x).device.type == "meta"
