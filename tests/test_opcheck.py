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


def _rmsprop_args(device: str, centered: bool, momentum: bool):
    # adam's lists double as RMSprop's: exp_avg_sqs -> square_avgs, the
    # max_exp_avg_sqs that amsgrad adds -> grad_avgs
    params, grads, _, square_avgs, grad_avgs, steps = _adam_args(device, amsgrad=centered)
    momentum_buffers = [torch.randn_like(p) for p in params] if momentum else []
    # grad_avg**2 <= square_avg keeps the centered sqrt real
    grad_avgs = [g * 0.1 for g in grad_avgs]
    return (params, grads, square_avgs, grad_avgs, momentum_buffers, steps)


RMSPROP_KWARGS = dict(alpha=0.99, eps=1e-8, weight_decay=0.01, maximize=False)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("amp", [False, True])
def test_rmsprop(device, centered, momentum, amp):
    extra = {}
    if amp:
        extra = dict(grad_scale=torch.tensor(8.0, device=device), found_inf=torch.tensor(0.0, device=device))
    torch.library.opcheck(
        torch.ops.fastopt.rmsprop_.default,
        _rmsprop_args(device, centered, momentum),
        dict(lr=1e-2, momentum=0.9 if momentum else 0.0, centered=centered, **RMSPROP_KWARGS, **extra),
    )


def test_rmsprop_tensor_lr(device):
    torch.library.opcheck(
        torch.ops.fastopt.rmsprop_.tensor_lr,
        _rmsprop_args(device, True, True),
        dict(lr=torch.tensor(1e-2, device=device), momentum=0.9, centered=True, **RMSPROP_KWARGS),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema(device, dtype):
    shapes = [(), (0,), (7,), (130, 3)]
    shadow = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    params = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    torch.library.opcheck(torch.ops.fastopt.ema_.default, (shadow, params), dict(decay=0.9))
# Dropout: an odd size that is not a multiple of a Philox block, a
# non-contiguous input (a transposed view) and an empty one.
@pytest.mark.parametrize("make", [lambda d: torch.randn(7, 19, device=d), lambda d: torch.randn(19, 7, device=d).t(), lambda d: torch.randn(0, 3, device=d)])
def test_dropout(device, make):
    seed = torch.tensor([3, 4], device=device)
    x = make(device)
    torch.library.opcheck(torch.ops.fastopt.dropout.default, (x.requires_grad_(), seed, 0.3))
    torch.library.opcheck(torch.ops.fastopt.dropout_.default, (x.detach().clone(), seed, 0.3))
    if x.numel():
        torch.library.opcheck(torch.ops.fastopt.dropout.default, (x, seed, 0.3, x.size(-1)))


@pytest.mark.parametrize("with_bias", [False, True])
def test_dropout_add(device, with_bias):
    seed = torch.tensor([3, 4], device=device)
    x, residual = torch.randn(5, 19, device=device), torch.randn(5, 19, device=device)
    bias = torch.randn(19, device=device, requires_grad=True) if with_bias else None
    torch.library.opcheck(
        torch.ops.fastopt.dropout_add.default, (x.requires_grad_(), residual.requires_grad_(), bias, seed, 0.3)
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
