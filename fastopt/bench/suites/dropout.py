"""Dropout (p = 0.5, float32): fastopt against torch's dropout paths.

Two cases on one flat tensor, forward and forward + backward. Forward reads x and writes y;
backward reads dy and writes dx (fastopt regenerates the mask from its seed;
torch also reads its saved mask, which is not counted; so does fastopt's
1-bit mask mode, an extra contender). A copy into a
preallocated tensor runs alongside as the read-x, write-y floor of forward.
Then channel-wise Dropout2d forward + backward, as after a ResNet's first
stage, in both memory formats (CPU: fastopt takes channels-last natively).
The notes give the bytes per element that autograd keeps for backward and,
on CUDA, the peak memory of a 3-layer MLP's training step with each dropout.
"""

from __future__ import annotations

from typing import Callable

import torch

import fastopt.nn
import fastopt.nn.functional as FF

from ..harness import Call, forward_backward
from ..suite import EXTRA, FASTOPT, REFERENCE, TORCH, Case, Context, Reps, Suite, with_graph_replays

P = 0.5
COPY = "copy y.copy_(x) (reference)"
FASTOPT_INPLACE = "fastopt dropout (inplace)"
FASTOPT_BITS = 'fastopt mask="bits"'
TORCH_F = "torch F.dropout"
NATIVE = "torch.native_dropout"

Dropout = Callable[[torch.Tensor], torch.Tensor]

# Forward functions of each contender that has autograd.
DROPOUTS: dict[str, Dropout] = {
    "fastopt": lambda x: FF.dropout(x, P),
    TORCH_F: lambda x: torch.nn.functional.dropout(x, P),
    NATIVE: lambda x: torch.native_dropout(x, P, True)[0],
}
ROLES = {"fastopt": FASTOPT, TORCH_F: TORCH, NATIVE: TORCH}
# The 1-bit saved-mask mode: forward also writes n/8 bytes of mask, backward
# reads them instead of redrawing the mask.
VARIANTS: dict[str, Dropout] = {FASTOPT_BITS: lambda x: FF.dropout(x, P, mask="bits")}


def numel(ctx: Context) -> int:
    if ctx.smoke:
        return 2**16
    return (16 if ctx.device.type == "cpu" else 256) * 2**20


def _inputs(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    n = numel(ctx)
    return torch.randn(n, generator=gen, device=ctx.device), torch.randn(n, generator=gen, device=ctx.device)


def _forward(ctx: Context) -> dict[str, Call]:
    x, _ = _inputs(ctx)
    scratch = x.clone()
    fns: dict[str, Call] = {name: (lambda f=f: f(x)) for name, f in {**DROPOUTS, **VARIANTS}.items()}
    # In place on a scratch copy: a value-preserving scale would be better, but
    # repeated dropout only zeroes more elements, which costs the same.
    fns[FASTOPT_INPLACE] = lambda: FF.dropout(scratch, P, inplace=True)
    fns[COPY] = lambda: scratch.copy_(x)
    return fns


def _backward(ctx: Context) -> dict[str, Call]:
    x, grad = _inputs(ctx)
    return {name: forward_backward(f, x, grad) for name, f in {**DROPOUTS, **VARIANTS}.items()}


def _channelwise(ctx: Context, shape: tuple[int, ...], fmt: torch.memory_format) -> dict[str, Call]:
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=ctx.device).contiguous(memory_format=fmt)
    grad = torch.randn(shape, generator=gen, device=ctx.device).contiguous(memory_format=fmt)
    return {
        "fastopt": forward_backward(fastopt.nn.Dropout2d(P), x, grad),
        "torch": forward_backward(torch.nn.Dropout2d(P), x, grad),
    }


def channelwise_cases(ctx: Context) -> list[Case]:
    shape = (2, 64, 8, 8) if ctx.smoke else (32 * ctx.batch_scale, 64, 56, 56)
    n = shape[0] * shape[1] * shape[2] * shape[3]
    result = []
    for fmt, layout in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC")):
        result.append(Case(
            f"Dropout2d forward+backward {shape} {layout}", 4 * n * 4,
            lambda fmt=fmt: _channelwise(ctx, shape, fmt), roles={"fastopt": FASTOPT, "torch": TORCH},
            params={"shape": list(shape), "memory_format": layout, "p": P, "dtype": "float32",
                    "work": "forward + backward"},
        ))  # fmt: skip
    return result


def cases(ctx: Context) -> list[Case]:
    n = numel(ctx)
    params = {"numel": n, "p": P, "dtype": "float32"}
    return with_graph_replays([
        Case("dropout forward", 2 * n * 4, lambda: _forward(ctx),
             roles={**ROLES, FASTOPT_INPLACE: EXTRA, FASTOPT_BITS: EXTRA, COPY: REFERENCE},
             params={**params, "work": "forward"}),
        Case("dropout forward+backward", 4 * n * 4, lambda: _backward(ctx),
             roles={**ROLES, FASTOPT_BITS: EXTRA}, params={**params, "work": "forward + backward"}),
        *channelwise_cases(ctx),
    ], ctx)  # fmt: skip


def saved_bytes_per_element(fn: Dropout, x: torch.Tensor) -> float:
    """Bytes autograd saves for backward per element of x, x itself excluded."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values()) / x.numel()


def mlp_step_peak_mib(fn: Dropout, device: torch.device, batch: int, width: int) -> float:
    """Peak CUDA memory of one training step of a 3-layer MLP with ``fn`` after
    each hidden layer, above what the model and its input hold before the step."""
    gen = torch.Generator(device=device).manual_seed(0)
    layers = [torch.nn.Linear(width, width, device=device) for _ in range(3)]
    x = torch.randn(batch, width, generator=gen, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    h = x
    for i, layer in enumerate(layers):
        h = layer(h)
        if i < len(layers) - 1:
            h = fn(torch.relu(h))
    h.square().mean().backward()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def notes(ctx: Context) -> dict[str, object]:
    x = torch.randn(2**16, device=ctx.device, requires_grad=True)
    fns = {**DROPOUTS, **VARIANTS}
    result: dict[str, object] = {
        "saved_bytes_per_element": {name: saved_bytes_per_element(f, x) for name, f in fns.items()}
    }
    if ctx.device.type == "cuda":
        # The GPU target's memory comparison: what a small MLP's training step
        # peaks at with each dropout (the masks torch saves are part of it).
        batch, width = (256, 256) if ctx.smoke else (8192, 4096)
        # Untimed first: cuBLAS allocates its workspaces on the first matmuls of
        # each thread (forward, and autograd's), and they would count in the
        # peak of whichever contender ran first.
        mlp_step_peak_mib(lambda t: t, ctx.device, batch, width)
        result[f"mlp_step_peak_mib (3 layers, batch {batch}, width {width})"] = {
            name: round(mlp_step_peak_mib(f, ctx.device, batch, width), 1) for name, f in fns.items()
        }
    return result


# torch's CPU dropout takes about 0.25 s per 16M-element call, so few rounds.
SUITE = Suite(name="dropout", title="dropout", cases=cases, reps=Reps(full=(9, 2), quick=(3, 1)), notes=notes)
