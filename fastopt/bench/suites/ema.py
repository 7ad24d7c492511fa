"""Parameter EMA: fastopt's fused update against torch's foreach and for-loop lerp.

One update, shadow = lerp(shadow, param, 1 - decay), over the optimizer
suite's parameter layouts. ``torch._foreach_lerp_`` is what
torch.optim.swa_utils.get_ema_multi_avg_fn runs. Minimal traffic per
parameter: read shadow and param, write shadow (12 B in float32).
"""

from __future__ import annotations

import math

import torch

import fastopt.optim

from ..harness import Call
from ..suite import FASTOPT, TORCH, Case, Context, Suite, dtype_name
from .optim import Shape, layouts

DECAY = 0.999
FOREACH = "torch _foreach_lerp_"
FOR_LOOP = "torch for-loop lerp_"
# Tensors per parameter the update touches: shadow and param read, shadow written.
TENSORS_MOVED = 3


def _tensors(shapes: tuple[Shape, ...], dtype: torch.dtype, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Seeded params and a shadow that differs from them, as after training steps."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, generator=gen, device=device, dtype=dtype) for s in shapes]
    shadow = [torch.randn(s, generator=gen, device=device, dtype=dtype) for s in shapes]
    return params, shadow


def _setup(shapes: tuple[Shape, ...], dtype: torch.dtype, device: torch.device) -> dict[str, Call]:
    """One update per contender, each on its own copy of the inputs."""
    params, shadow = _tensors(shapes, dtype, device)
    ema = fastopt.optim.EMA(params, decay=DECAY)
    ema.shadow = shadow  # the same starting average as the torch contenders'

    foreach_params, foreach_shadow = _tensors(shapes, dtype, device)
    loop_params, loop_shadow = _tensors(shapes, dtype, device)

    def foreach() -> None:
        torch._foreach_lerp_(foreach_shadow, foreach_params, 1 - DECAY)

    def for_loop() -> None:
        for s, p in zip(loop_shadow, loop_params):
            s.lerp_(p, 1 - DECAY)

    return {FOR_LOOP: for_loop, FOREACH: foreach, "fastopt": ema.update}


def cases(ctx: Context) -> list[Case]:
    result = []
    for dtype in (torch.float32, torch.bfloat16):
        for layout, shapes in layouts(ctx).items():
            numel = sum(math.prod(s) for s in shapes)
            result.append(
                Case(
                    name=f"EMA {layout} {dtype_name(dtype)}",
                    nbytes=numel * TENSORS_MOVED * torch.empty((), dtype=dtype).element_size(),
                    setup=lambda shapes=shapes, dtype=dtype: _setup(shapes, dtype, ctx.device),
                    roles={FOR_LOOP: TORCH, FOREACH: TORCH, "fastopt": FASTOPT},
                    params={"layout": layout, "tensors": len(shapes), "numel": numel,
                            "dtype": dtype_name(dtype), "decay": DECAY},
                )
            )  # fmt: skip
    return result


SUITE = Suite(name="ema", title="EMA update of the weights", cases=cases)
