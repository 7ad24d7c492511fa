"""Activation checkpointing (torch.utils.checkpoint) through fastopt's modules,
reentrant and not (NOTE: [unpack before going below autograd] in
csrc/autograd/common.h): the same outputs, gradients and buffers as without it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import fastopt.nn
import fastopt.nn.functional as FF

# (id, factory over a torch.nn-like namespace): the norms, compared with torch's
# modules under the same checkpoint (BatchNorm's running statistics are
# updated by the forward and again by the recomputation, in both).
NORMS: list[tuple[str, Callable]] = [
    ("batch_norm", lambda nn: nn.BatchNorm2d(4)),
    ("group_norm", lambda nn: nn.GroupNorm(2, 4)),
    ("layer_norm", lambda nn: nn.LayerNorm(3)),
    ("instance_norm", lambda nn: nn.InstanceNorm2d(4, affine=True, track_running_stats=True)),
]


def _checkpointed_step(module: torch.nn.Module, x: torch.Tensor, reentrant: bool) -> list[torch.Tensor]:
    """Output, input gradient and parameter gradients of sin(module(x)).sum() under checkpoint."""
    x = x.clone().requires_grad_()
    y = checkpoint(module, x, use_reentrant=reentrant)
    y.sin().sum().backward()
    return [y.detach(), x.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("name,factory", NORMS, ids=[n for n, _ in NORMS])
def test_norms_under_checkpoint_match_torch(device, name, factory, reentrant):
    x = torch.randn(2, 4, 3, 3, device=device)
    ours, ref = factory(fastopt.nn).to(device), factory(torch.nn).to(device)
    for a, b in zip(_checkpointed_step(ours, x, reentrant), _checkpointed_step(ref, x, reentrant)):
        torch.testing.assert_close(a, b)
    for a, b in zip(ours.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b)


DROPOUTS: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
    ("dropout", lambda x: FF.dropout(x, 0.5)),
    ("bits", lambda x: FF.dropout(x, 0.5, mask="bits")),
    ("dropout2d", lambda x: FF.dropout2d(x, 0.5)),
    ("dropout_add", lambda x: FF.dropout_add(x, x.cos(), 0.5)),
]


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("name,fn", DROPOUTS, ids=[n for n, _ in DROPOUTS])
def test_dropout_under_checkpoint_recomputes_the_same_mask(device, name, fn, reentrant):
    """checkpoint restores the RNG state before recomputing, so the mask drawn again is the forward's."""
    x = torch.randn(2, 4, 3, 3, device=device)
    results = []
    for use_checkpoint in (True, False):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(3)
        y = checkpoint(fn, leaf, use_reentrant=reentrant) if use_checkpoint else fn(leaf)
        y.sin().sum().backward()
        results.append((y.detach(), leaf.grad))
    (y, grad), (y_ref, grad_ref) = results
    assert torch.equal(y, y_ref)
    assert torch.equal(grad, grad_ref)
