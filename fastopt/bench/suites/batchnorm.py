"""BatchNorm2d: training forward+backward and evaluation forward, fastopt against torch.

Minimal traffic, each tensor counted once: training reads x and writes y,
then reads x and dy and writes dx (5 tensors of x's size; the statistics pass
re-reads x, which is not counted); evaluation reads x and writes y (2). The
[C] parameters and statistics are negligible.
"""

from __future__ import annotations

import torch

import fastopt.nn

from ..harness import Call, forward_backward
from ..suite import FASTOPT, TORCH, Case, Context, Suite, with_graph_replays

# Tensors of x's size moved per call, by mode.
TENSORS_MOVED = {"train fwd+bwd": 5, "eval fwd": 2}

# On CUDA torch's BatchNorm runs cuDNN by default; its native kernels are the
# other torch path (the target is against the faster of the two).
NATIVE = "torch native (cuDNN off)"


def _train_step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Call:
    return forward_backward(module.train(), x, dy)


def _eval_step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Call:
    module.eval()

    def step() -> None:
        with torch.no_grad():
            module(x)

    return step


def _case(shape: tuple[int, ...], fmt: torch.memory_format, mode: str, ctx: Context) -> Case:
    def setup() -> dict[str, Call]:
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        x = torch.randn(shape, generator=gen, device=ctx.device).to(memory_format=fmt)
        dy = torch.randn(shape, generator=gen, device=ctx.device).to(memory_format=fmt)
        make = _train_step if mode == "train fwd+bwd" else _eval_step
        ours = fastopt.nn.BatchNorm2d(shape[1]).to(ctx.device)
        ref = torch.nn.BatchNorm2d(shape[1]).to(ctx.device)
        calls = {"fastopt": make(ours, x, dy), "torch": make(ref, x, dy)}
        if ctx.device.type == "cuda":
            native = make(torch.nn.BatchNorm2d(shape[1]).to(ctx.device), x, dy)

            def without_cudnn() -> None:
                with torch.backends.cudnn.flags(enabled=False):
                    native()

            calls[NATIVE] = without_cudnn
        return calls

    numel = shape[0] * shape[1] * shape[2] * shape[3]
    layout = "NHWC" if fmt == torch.channels_last else "NCHW"
    return Case(
        name=f"BatchNorm2d {mode} {tuple(shape)} {layout}",
        nbytes=TENSORS_MOVED[mode] * numel * 4,
        setup=setup,
        roles={"fastopt": FASTOPT, "torch": TORCH, **({NATIVE: TORCH} if ctx.device.type == "cuda" else {})},
        params={"shape": list(shape), "memory_format": layout, "dtype": "float32", "work": mode},
    )


def cases(ctx: Context) -> list[Case]:
    # (N, C, H, W): a ResNet early stage and a late one.
    shapes = [(4, 16, 8, 8)] if ctx.smoke else [(32, 64, 56, 56), (64, 256, 14, 14)]
    shapes = [(n * ctx.batch_scale, c, h, w) for n, c, h, w in shapes]
    plain = [
        _case(shape, fmt, mode, ctx)
        for shape in shapes
        for fmt in (torch.contiguous_format, torch.channels_last)
        for mode in TENSORS_MOVED
    ]
    return with_graph_replays(plain, ctx)


SUITE = Suite(name="batchnorm", title="BatchNorm2d training and evaluation", cases=cases)
