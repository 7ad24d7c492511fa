"""Adam over a model whose every tensor is its own param group.

Giving each layer its own learning rate (layer-wise lr decay, per-layer
fine-tuning) turns one param group into hundreds. torch's optimizers then run
their per-group machinery, and fused/foreach one kernel call, once per group,
so a step is dominated by per-call overhead. fastopt puts every group's
hyperparameters in one per-tensor table and makes one op call per step. The
"one call per group" contender is fastopt without that table, to isolate what
it buys. Minimal traffic per parameter: param, exp_avg and exp_avg_sq read
and written, grad read (28 B in float32).
"""

from __future__ import annotations

import math

import torch

import fastopt.optim

from ..harness import Call
from ..suite import EXTRA, FASTOPT, TORCH, Case, Context, Suite

NUM_GROUPS = 400
PER_GROUP = "fastopt, one call per group"


def _layouts(ctx: Context) -> dict[str, list[tuple[int, ...]]]:
    """A weight and a bias per layer, each its own group."""
    if ctx.smoke:
        return {"smoke": [(8, 8), (8,)] * 4}
    return {
        # 200 layers of width 64: 0.8M parameters, overhead-bound
        "small": [(64, 64), (64,)] * (NUM_GROUPS // 2),
        # 200 layers of width 256: 13M parameters, closer to memory-bound
        "medium": [(256, 256), (256,)] * (NUM_GROUPS // 2),
    }


def _groups(shapes: list[tuple[int, ...]], device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    groups = []
    for i, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(device))
        p.grad = torch.randn(shape, generator=gen).to(device)
        groups.append({"params": [p], "lr": 1e-3 * 0.99**i})  # layer-wise lr decay
    return groups


class _PerGroupAdam(fastopt.optim.Adam):
    """fastopt's Adam without the hyperparameter table: one op call per group."""

    def _hparam_row(self, group: dict) -> None:
        return None


def _setup(shapes: list[tuple[int, ...]], device: torch.device) -> dict[str, Call]:
    factories = {
        "fastopt": lambda g: fastopt.optim.Adam(g, weight_decay=0.01),
        PER_GROUP: lambda g: _PerGroupAdam(g, weight_decay=0.01),
        "torch fused": lambda g: torch.optim.Adam(g, weight_decay=0.01, fused=True),
        "torch foreach": lambda g: torch.optim.Adam(g, weight_decay=0.01, foreach=True),
        "torch for-loop": lambda g: torch.optim.Adam(g, weight_decay=0.01, foreach=False),
    }
    steps = {}
    for name, factory in factories.items():
        opt = factory(_groups(shapes, device))
        opt.step()  # the state exists before timing
        steps[name] = opt.step
    return steps


def cases(ctx: Context) -> list[Case]:
    result = []
    for layout, shapes in _layouts(ctx).items():
        numel = sum(math.prod(s) for s in shapes)
        result.append(
            Case(
                name=f"Adam {len(shapes)} param groups {layout}",
                nbytes=7 * numel * 4,
                setup=lambda shapes=shapes: _setup(shapes, ctx.device),
                roles={"fastopt": FASTOPT, PER_GROUP: EXTRA, "torch fused": TORCH,
                       "torch foreach": TORCH, "torch for-loop": TORCH},
                params={"layout": layout, "groups": len(shapes), "numel": numel, "dtype": "float32"},
            )
        )  # fmt: skip
    return result


def notes(ctx: Context) -> dict[str, object]:
    """Op calls per step, counted by the profiler on a small instance."""
    shapes = [(8, 8), (8,)] * 3
    names = ("fastopt::adam_", "aten::_fused_adam_")
    counts = {}
    for label, opt in (
        ("fastopt", fastopt.optim.Adam(_groups(shapes, ctx.device))),
        ("torch fused", torch.optim.Adam(_groups(shapes, ctx.device), fused=True)),
    ):
        opt.step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            opt.step()
        counts[label] = sum(e.count for e in prof.key_averages() if e.key in names)
    return {"optimizer op calls per step for 6 param groups": counts}


SUITE = Suite(name="many_groups", title="Adam over 400 single-tensor param groups", cases=cases, notes=notes)
