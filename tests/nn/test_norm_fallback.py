"""Devices without fastopt's group-norm kernels run torch's implementation.

A model moved to such a device (meta, or CUDA under a CPU-only build), or
converted with fastopt.nn.convert, must keep working. Each device present
stands in for one by hiding its kernels.
"""

import pytest
import torch

import fastopt.nn as fnn
from fastopt.nn import _norm_functional


@pytest.fixture
def no_kernels(monkeypatch):
    monkeypatch.setattr(_norm_functional, "_CPU_KERNELS", False)
    monkeypatch.setattr(_norm_functional, "_CUDA_KERNELS", False)


def test_every_tested_device_has_kernels(device):
    # Without this, the comparisons of the other norm tests could pass on a
    # device by running torch against itself.
    assert _norm_functional.has_kernel(torch.empty(0, device=device))


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


def test_modules_fall_back_to_torch(device, no_kernels):
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5, 4, device=device)
    modules = [
        (fnn.GroupNorm(4, 8, activation="silu"), torch.nn.GroupNorm(4, 8), torch.nn.functional.silu),
        (fnn.LayerNorm([5, 4]), torch.nn.LayerNorm([5, 4]), lambda t: t),
        (
            fnn.InstanceNorm2d(8, affine=True, track_running_stats=True),
            torch.nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
            lambda t: t,
        ),
    ]
    for fast, ref, act in modules:
        _check_same_as_torch(fast.to(device), ref.to(device), x, act)


def test_meta_tensors_take_the_fallback():
    # No fastopt kernel is registered for meta; shapes still propagate through torch's.
    x = torch.randn(2, 4, 3, device="meta")
    assert not _norm_functional.has_kernel(x)
    assert fnn.GroupNorm(2, 4, activation="relu").to("meta")(x).shape == x.shape
    assert fnn.LayerNorm(3).to("meta")(x).device.type == "meta"
