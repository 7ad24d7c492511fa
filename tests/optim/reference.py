"""Run a fastopt optimizer and its torch.optim reference side by side."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import torch
from torch import Tensor

# A parameter set that covers the layouts a kernel can trip over. Each entry
# is (name, factory(device, dtype) -> Parameter).
ParamFactory = Callable[[str, torch.dtype], torch.nn.Parameter]


def _param(t: Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t)


PARAM_SET: list[tuple[str, ParamFactory]] = [
    # minimal: one scalar (0-dim) parameter
    ("scalar", lambda d, dt: _param(torch.randn((), device=d, dtype=dt))),
    # empty: zero elements must be a no-op, not a crash
    ("empty", lambda d, dt: _param(torch.randn(0, 3, device=d, dtype=dt))),
    # non-aligned: 1000003 is prime, so the SIMD/vector loop leaves a tail,
    # and it spans several 64K-element chunks of the multi-tensor driver
    ("non_aligned", lambda d, dt: _param(torch.randn(1000003, device=d, dtype=dt))),
    # non-contiguous: a transposed parameter whose grad arrives contiguous
    ("transposed", lambda d, dt: _param(torch.randn(37, 19, device=d, dtype=dt).t())),
    # non-dense: every other column of a matrix; the kernel must not touch the gaps
    ("strided", lambda d, dt: _param(torch.randn(24, 40, device=d, dtype=dt)[:, ::2])),
    # channels_last 4-d conv weight
    (
        "channels_last",
        lambda d, dt: _param(
            torch.randn(8, 6, 3, 3, device=d, dtype=dt).to(memory_format=torch.channels_last)
        ),
    ),
    # a bias-sized vector
    ("bias", lambda d, dt: _param(torch.randn(17, device=d, dtype=dt))),
]


def make_params(device: str, dtype: torch.dtype, names: Sequence[str] | None = None) -> list[torch.nn.Parameter]:
    return [f(device, dtype) for n, f in PARAM_SET if names is None or n in names]


def clone_params(params: Sequence[torch.nn.Parameter], dtype: torch.dtype | None = None) -> list[torch.nn.Parameter]:
    """Copies with the same strides (a transposed param stays transposed)."""
    out = []
    for p in params:
        c = torch.empty_strided(p.size(), p.stride(), dtype=dtype or p.dtype, device=p.device)
        c.copy_(p.detach())
        out.append(torch.nn.Parameter(c))
    return out


def random_grads(params: Sequence[Tensor], steps: int, skip: Callable[[int, int], bool] = lambda i, s: False) -> list[list[Tensor | None]]:
    """grads[step][i]; None where skip(i, step) says the param gets no grad."""
    return [
        [None if skip(i, s) else torch.randn(p.shape, device=p.device, dtype=p.dtype) for i, p in enumerate(params)]
        for s in range(steps)
    ]


def set_grads(params: Sequence[torch.nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.to(p.dtype).clone()


def run_steps(opt: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter], grads: list[list[Tensor | None]]) -> None:
    for step_grads in grads:
        set_grads(params, step_grads)
        opt.step()


def assert_same_state(ours: torch.optim.Optimizer, ref: torch.optim.Optimizer, ours_params, ref_params, **tol) -> None:
    """Parameters and every state entry match, with the same keys."""
    for i, (p, q) in enumerate(zip(ours_params, ref_params)):
        torch.testing.assert_close(p, q, msg=lambda m: f"param {i}: {m}", **tol)
        s, r = ours.state.get(p, {}), ref.state.get(q, {})
        assert set(s) == set(r), f"param {i}: state keys {sorted(s)} != torch's {sorted(r)}"
        for key in r:
            a, b = s[key], r[key]
            if key == "step":
                # fastopt keeps CUDA step counters on the device, as torch's fused path does
                torch.testing.assert_close(a.cpu().double(), b.cpu().double(), msg=lambda m: f"param {i} step: {m}")
            else:
                torch.testing.assert_close(a, b, msg=lambda m: f"param {i} {key}: {m}", **tol)


def check_low_precision(
    ours_cls: type[torch.optim.Optimizer],
    ref_cls: type[torch.optim.Optimizer],
    dtype: torch.dtype,
    device: str,
    config: dict[str, Any],
    torch_kwargs: dict[str, Any],
    steps: int = 10,
) -> None:
    """fastopt in 16-bit must be at most twice as far from a float32 run as torch in 16-bit.

    ``torch_kwargs`` picks torch's 16-bit path (for example ``fused=True``
    where torch has a fused kernel, its most accurate one). The float32
    reference always runs torch's for-loop.
    """
    fp32_params = make_params(device, torch.float32, ["non_aligned", "channels_last", "bias", "transposed"])
    torch_params = clone_params(fp32_params, dtype)
    ours_params = clone_params(fp32_params, dtype)
    grads = random_grads(fp32_params, steps)
    # every run sees the same 16-bit-representable gradients
    grads = [[g.to(dtype).float() for g in step] for step in grads]
    run_steps(ref_cls(fp32_params, foreach=False, **config), fp32_params, grads)
    run_steps(ref_cls(torch_params, **torch_kwargs, **config), torch_params, grads)
    run_steps(ours_cls(ours_params, **config), ours_params, grads)
    for ref, theirs, ours in zip(fp32_params, torch_params, ours_params):
        torch_err = (theirs.float() - ref).abs().max()
        ours_err = (ours.float() - ref).abs().max()
        assert torch.isfinite(torch_err), "pick a config whose 16-bit torch run stays finite"
        assert ours_err <= 2 * torch_err, f"fastopt error {ours_err} > 2 x torch error {torch_err}"


def assert_same_error(make_ref: Callable[[], Any], make_ours: Callable[[], Any]) -> None:
    """make_ours() raises torch's exception type with torch's message."""
    with pytest.raises(Exception) as expected:
        make_ref()
    with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
        make_ours()
