"""GroupNorm, LayerNorm and InstanceNorm forward+backward: fastopt against torch.

Each case times one forward and one backward of the module on identical
inputs. The minimal traffic is x read and y written in the forward, and x and
dy read and dx written in the backward: 5 tensors of x's size (the per-channel
parameters are negligible).
"""

from __future__ import annotations

from typing import Callable

import torch

import fastopt.nn

from ..harness import Call, forward_backward
from ..suite import FASTOPT, TORCH, Case, Context, Suite, with_graph_replays

TENSORS_MOVED = 5

ModulePair = tuple[Callable[[], torch.nn.Module], Callable[[], torch.nn.Module]]


def _case(
    name: str,
    shape: tuple[int, ...],
    fmt: torch.memory_format,
    modules: ModulePair,
    ctx: Context,
    dtype: torch.dtype = torch.float32,
) -> Case:
    def setup() -> dict[str, Call]:
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        x = torch.randn(shape, generator=gen, device=ctx.device).to(dtype=dtype, memory_format=fmt)
        dy = torch.randn(shape, generator=gen, device=ctx.device).to(dtype=dtype, memory_format=fmt)
        ours, ref = (make().to(ctx.device, dtype) for make in modules)
        return {"fastopt": forward_backward(ours, x, dy), "torch": forward_backward(ref, x, dy)}

    numel = 1
    for n in shape:
        numel *= n
    layout = "NHWC" if fmt == torch.channels_last else ("NCHW" if len(shape) == 4 else "")
    suffix = "" if dtype == torch.float32 else f" {str(dtype).removeprefix('torch.')}"
    return Case(
        name=f"{name} {tuple(shape)} {layout}".rstrip() + suffix,
        nbytes=TENSORS_MOVED * numel * dtype.itemsize,
        setup=setup,
        roles={"fastopt": FASTOPT, "torch": TORCH},
        params={"shape": list(shape), "memory_format": layout or "contiguous",
                "dtype": str(dtype).removeprefix("torch."), "work": "forward + backward"},
    )  # fmt: skip


def cases(ctx: Context) -> list[Case]:
    # (N, C, H, W): a ResNet early stage and a late one.
    shapes = [(2, 64, 8, 8)] if ctx.smoke else [(32, 64, 56, 56), (64, 256, 14, 14)]
    shapes = [(n * ctx.batch_scale, c, h, w) for n, c, h, w in shapes]
    result = []
    for shape in shapes:
        c = shape[1]
        for fmt in (torch.contiguous_format, torch.channels_last):
            pair = (lambda c=c: fastopt.nn.GroupNorm(32, c), lambda c=c: torch.nn.GroupNorm(32, c))
            result.append(_case("GroupNorm(32)", shape, fmt, pair, ctx))
    if ctx.device.type == "cuda" and not ctx.smoke:
        # A diffusion U-Net block, the GPU target's shape, in both of its dtypes.
        pair = (lambda: fastopt.nn.GroupNorm(32, 512), lambda: torch.nn.GroupNorm(32, 512))
        for dtype in (torch.float32, torch.bfloat16):
            result.append(_case("GroupNorm(32)", (32, 512, 64, 64), torch.channels_last, pair, ctx, dtype))
    first = shapes[0]
    pair = (lambda: fastopt.nn.InstanceNorm2d(first[1], affine=True), lambda: torch.nn.InstanceNorm2d(first[1], affine=True))
    result.append(_case("InstanceNorm2d(affine)", first, torch.contiguous_format, pair, ctx))
    rows, hidden = (16, 64) if ctx.smoke else (4096 * ctx.batch_scale, 768)
    pair = (lambda: fastopt.nn.LayerNorm(hidden), lambda: torch.nn.LayerNorm(hidden))
    result.append(_case(f"LayerNorm({hidden})", (rows, hidden), torch.contiguous_format, pair, ctx))
    return with_graph_replays(result, ctx)


SUITE = Suite(name="norm", title="normalization forward+backward", cases=cases)
