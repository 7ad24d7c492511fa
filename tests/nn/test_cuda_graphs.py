"""CUDA graph capture of fastopt's modules, forward and backward.

A model captured whole (by hand, or by torch.compile's "reduce-overhead"
mode) replays the kernels its first run recorded: every op must be
capturable (no host synchronisation, device-side random seeds) and a replay
must compute what an eager step computes. Needs a GPU; skipped elsewhere.
"""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch

import fastopt.nn

from .tensors import dropout_scaled

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")

MODULES: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]] = {
    "batch_norm": (lambda: fastopt.nn.BatchNorm2d(8), (4, 8, 5, 5)),
    "batch_norm_nhwc": (lambda: fastopt.nn.BatchNorm2d(8), (4, 8, 5, 5)),
    "group_norm_silu": (lambda: fastopt.nn.GroupNorm(4, 8, activation="silu"), (4, 8, 5, 5)),
    "instance_norm": (lambda: fastopt.nn.InstanceNorm2d(8, affine=True, track_running_stats=True), (4, 8, 5, 5)),
    "layer_norm": (lambda: fastopt.nn.LayerNorm(16), (4, 6, 16)),
}


def _step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    y = module(x)
    y.backward(dy)
    return y


def _clear_grads(module: torch.nn.Module, x: torch.Tensor) -> None:
    x.grad = None
    for p in module.parameters():
        p.grad = None


def _capture(
    step: Callable[[], torch.Tensor], before_capture: Callable[[], None]
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """``step`` run once on a side stream (the warm-up torch's CUDA-graph
    documentation prescribes), then ``before_capture``, then captured: the
    graph and the output tensor its replays write."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    before_capture()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


@pytest.mark.parametrize("name", list(MODULES))
def test_replays_match_eager_steps(name):
    make, shape = MODULES[name]
    torch.manual_seed(0)
    eager = make().cuda().train()
    graphed = copy.deepcopy(eager)
    fmt = torch.channels_last if name.endswith("nhwc") else torch.contiguous_format
    x_eager = torch.randn(shape, device="cuda").to(memory_format=fmt).requires_grad_()
    x_graph = x_eager.detach().clone().requires_grad_()
    dy = torch.randn(shape, device="cuda")

    def before_capture() -> None:
        _step(eager, x_eager, dy)  # the warm-up's step, so that running statistics agree
        _clear_grads(graphed, x_graph)

    graph, y_graph = _capture(lambda: _step(graphed, x_graph, dy), before_capture)

    for _ in range(3):
        _clear_grads(eager, x_eager)
        y_eager = _step(eager, x_eager, dy)
        graph.replay()
        torch.testing.assert_close(y_graph, y_eager)
        torch.testing.assert_close(x_graph.grad, x_eager.grad)
        for (pname, p), q in zip(graphed.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=lambda m, pname=pname: f"{pname}.grad: {m}")
        for (bname, b), c in zip(graphed.named_buffers(), eager.buffers()):
            torch.testing.assert_close(b, c, msg=lambda m, bname=bname: f"{bname}: {m}")


@pytest.mark.parametrize("mask", ["recompute", "bits"])
def test_dropout_replays_draw_new_masks(mask):
    """Each replay draws a new mask from the device generator; its survivors are
    x / (1 - p) and the backward applies the same mask."""
    p = 0.4
    x = torch.randn(4096, device="cuda", requires_grad=True)
    dy = torch.ones(4096, device="cuda")

    def step() -> torch.Tensor:
        y = fastopt.nn.functional.dropout(x, p, training=True, mask=mask)
        y.backward(dy)
        return y

    graph, y = _capture(step, lambda: setattr(x, "grad", None))

    kept = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        keep = y != 0
        kept.append(keep.clone())
        torch.testing.assert_close(y[keep], dropout_scaled(x.detach()[keep], 1 - p), rtol=0, atol=0)
        torch.testing.assert_close(x.grad, dropout_scaled(keep.float(), 1 - p), rtol=0, atol=0)
    assert not torch.equal(kept[0], kept[1])
