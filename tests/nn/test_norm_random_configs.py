"""Seeded random configurations of every normalization module against torch and float64.

The hand-picked cases of the per-module tests cover each option; this file
covers their combinations: module, dtype (16-bit inputs on float32 or 16-bit
parameters), layout (contiguous, channels_last, strided, permuted storage),
momentum, affine, bias, track_running_stats, train and eval in turn. It found
float16 InstanceNorm running estimates turned NaN at momentum 0 (the variance
rounded to inf before the blend).

Each case is judged against torch's module run in float64 on the same
values: fastopt's error may not exceed twice torch's plus a dtype's rounding
allowance, so a case where torch is the less accurate one (its channels-last
GroupNorm, see test_group_norm.py) does not fail.
"""

from __future__ import annotations

import random

import pytest
import torch

import fastopt.nn

from .tensors import assert_within_twice_torch_error

CASES = 100
STEPS = 3

# Rounding allowance relative to the reference's scale (at least 1), beyond
# twice torch's error: the sums behind dx and the parameter gradients add up
# a few hundred values here.
ALLOWANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 4e-2, torch.float16: 5e-3}


def _config(rng: random.Random) -> tuple[str, tuple, dict, list[int], torch.dtype, torch.dtype, str]:
    kind = rng.choice(["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LayerNorm", "InstanceNorm1d",
                       "InstanceNorm2d", "InstanceNorm3d"])
    dtype = rng.choice([torch.float32, torch.float64, torch.bfloat16, torch.float16])
    param_dtype = dtype if dtype not in (torch.bfloat16, torch.float16) or rng.random() < 0.5 else torch.float32
    C = rng.choice([1, 3, 4, 8, 12])
    spatial = {"1d": 1, "2d": 2, "3d": 3}.get(kind[-2:], rng.choice([1, 2]))
    shape = [rng.choice([2, 3, 5]), C] + [rng.choice([1, 2, 3, 5, 7]) for _ in range(spatial)]
    if kind.startswith("InstanceNorm") and all(s == 1 for s in shape[2:]):
        shape[-1] = 3  # InstanceNorm refuses a single value per instance, as torch's does
    if kind.startswith("BatchNorm"):
        kw = dict(momentum=rng.choice([0.1, 0.5, None]), affine=rng.random() < 0.8,
                  track_running_stats=rng.random() < 0.8, bias=rng.random() < 0.7)
        args: tuple = (C,)
    elif kind.startswith("InstanceNorm"):
        kw = dict(momentum=rng.choice([0.1, 0.5, None]), affine=rng.random() < 0.5, track_running_stats=rng.random() < 0.5,
                  bias=rng.random() < 0.7)
        args = (C,)
    elif kind == "GroupNorm":
        kw = dict(affine=rng.random() < 0.8, bias=rng.random() < 0.7)
        args = (rng.choice([g for g in range(1, C + 1) if C % g == 0]), C)
    else:
        k = rng.choice([1, 2])
        kw = dict(elementwise_affine=rng.random() < 0.8, bias=rng.random() < 0.7)
        args = (tuple(shape[-k:]),)
    layout = rng.choice(["contiguous", "channels_last", "strided", "permuted"])
    # A spread of 300 gives variances past float16's largest value (65504).
    spread = rng.choice([2.0, 2.0, 2.0, 300.0])
    return kind, args, kw, shape, dtype, param_dtype, layout, spread


def _input(shape: list[int], dtype: torch.dtype, layout: str, spread: float, gen: torch.Generator) -> torch.Tensor:
    # A mean of 3, no more than the spread: torch and fastopt are both far
    # from their float32 floor, so the comparison is of the algorithms, not
    # of luck (test_group_norm.py tests large means).
    x = (torch.randn(shape, dtype=torch.float64, generator=gen) * spread + 3).to(dtype)
    if layout == "channels_last" and x.dim() in (4, 5):
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    if layout == "strided":
        wide = torch.zeros([*shape[:-1], 2 * shape[-1]], dtype=dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "permuted":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


def _assert_no_worse(name: str, ours: torch.Tensor, theirs: torch.Tensor, exact: torch.Tensor) -> None:
    if exact.numel() == 0:
        return
    scale = max(exact.abs().max().item(), 1.0)
    units = ALLOWANCE[ours.dtype] / torch.finfo(ours.dtype).eps
    assert_within_twice_torch_error(name, ours, theirs, exact, scale, units)


@pytest.mark.parametrize("seed", range(CASES))
def test_random_configuration(device, seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    kind, args, kw, shape, dtype, param_dtype, layout, spread = _config(rng)
    ref = getattr(torch.nn, kind)(*args, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        for b in ref.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    state = ref.state_dict()
    ours = getattr(fastopt.nn, kind)(*args, **kw)
    ours.load_state_dict(state)
    exact = getattr(torch.nn, kind)(*args, **kw).double()
    exact.load_state_dict(state)
    ref.to(device, param_dtype)
    ours.to(device, param_dtype)
    exact.to(device)
    info = (kind, args, kw, shape, dtype, param_dtype, layout, spread)
    for step in range(STEPS):
        training = rng.random() < 0.7
        for m in (ours, ref, exact):
            m.train(training)
        x = _input(shape, dtype, layout, spread, gen).to(device)
        grad = torch.randn(shape, generator=gen).to(device, dtype)
        leaves = [x.detach().clone(memory_format=torch.preserve_format).requires_grad_() for _ in range(2)]
        leaves.append(x.detach().double().requires_grad_())
        outs = [m(leaf) for m, leaf in zip((ours, ref, exact), leaves)]
        for out, g in zip(outs, (grad, grad, grad.double())):
            out.backward(g)
        case = f"step {step} of {info}"
        _assert_no_worse(f"y, {case}", outs[0], outs[1], outs[2])
        _assert_no_worse(f"dx, {case}", leaves[0].grad, leaves[1].grad, leaves[2].grad)
        for (name, p), q, e in zip(ours.named_parameters(), ref.parameters(), exact.parameters()):
            _assert_no_worse(f"d{name}, {case}", p.grad, q.grad, e.grad)
        for (name, b), c, e in zip(ours.named_buffers(), ref.buffers(), exact.buffers()):
            if b.is_floating_point():
                _assert_no_worse(f"{name}, {case}", b, c, e)
            else:
                assert torch.equal(b, c), (name, info)
        for m in (ours, ref, exact):
            m.zero_grad()
