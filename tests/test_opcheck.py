"""torch.library.opcheck over every fastopt op, on every device.

opcheck verifies the schema against what the kernel really mutates, the fake
kernel against the real one, and that the op traces under AOTAutograd.
"""

from __future__ import annotations

import pytest
import torch

import fastopt  # noqa: F401  (registers the ops)


def _adam_args(device: str, amsgrad: bool):
    shapes = [(), (0,), (7,), (130, 3)]
    params = [torch.randn(s, device=device) for s in shapes]
    grads = [torch.randn(s, device=device) for s in shapes]
    exp_avgs = [torch.rand(s, device=device) for s in shapes]
    exp_avg_sqs = [torch.rand(s, device=device) for s in shapes]
    max_exp_avg_sqs = [torch.rand(s, device=device) for s in shapes] if amsgrad else []
    step_device = "cpu" if device == "cpu" else device
    steps = [torch.tensor(3.0, device=step_device) for _ in shapes]
    return (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)


KWARGS = dict(beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, maximize=False, decoupled_weight_decay=True)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("amp", [False, True])
def test_adam(device, amsgrad, amp):
    extra = {}
    if amp:
        extra = dict(grad_scale=torch.tensor(8.0, device=device), found_inf=torch.tensor(0.0, device=device))
    torch.library.opcheck(
        torch.ops.fastopt.adam_.default, _adam_args(device, amsgrad), dict(lr=1e-3, amsgrad=amsgrad, **KWARGS, **extra)
    )


def test_adam_tensor_lr(device):
    torch.library.opcheck(
        torch.ops.fastopt.adam_.tensor_lr,
        _adam_args(device, False),
        dict(lr=torch.tensor(1e-3, device=device), amsgrad=False, **KWARGS),
    )


def _norm_inputs(device: str, channels_last: bool, dtype: torch.dtype = torch.float32):
    x = torch.randn(2, 6, 3, 5, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, torch.randn(6, device=device, dtype=dtype), torch.randn(6, device=device, dtype=dtype)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [0, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm(device, channels_last, activation, dtype):
    x, w, b = _norm_inputs(device, channels_last, dtype)
    torch.library.opcheck(torch.ops.fastopt.group_norm_fwd.default, (x, w, b, 3, 1e-5, activation))
    y, mean, rstd = torch.ops.fastopt.group_norm_fwd(x, w, b, 3, 1e-5, activation)
    torch.library.opcheck(
        torch.ops.fastopt.group_norm_bwd.default, (torch.randn_like(y), x, mean, rstd, w, b, 3, activation)
    )


def test_group_norm_no_affine(device):
    x, _, _ = _norm_inputs(device, False)
    torch.library.opcheck(torch.ops.fastopt.group_norm_fwd.default, (x.requires_grad_(), None, None, 2, 1e-5, 0))
