"""Writes of fastopt's mutating ops are counted in the tensors' version counters
(NOTE: [in-place versions] in csrc/autograd/inplace_versions.cpp), so that a
backward through a graph that saved a tensor before it was overwritten raises
as torch does instead of differentiating with the new values."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import fastopt
import fastopt.nn
import fastopt.nn.functional as FF

STALE = "modified by an inplace operation"

OPTIMIZERS: list[tuple[type, Callable[[], torch.optim.Optimizer]]] = [
    (fastopt.optim.Adam, torch.optim.Adam),
    (fastopt.optim.AdamW, torch.optim.AdamW),
    (fastopt.optim.SGD, torch.optim.SGD),
    (fastopt.optim.Adagrad, torch.optim.Adagrad),
    (fastopt.optim.RMSprop, torch.optim.RMSprop),
]


@pytest.mark.parametrize("ours,theirs", OPTIMIZERS, ids=[o.__name__ for o, _ in OPTIMIZERS])
def test_step_after_a_graph_saved_the_parameter_fails_backward_as_in_torch(device, ours, theirs):
    for cls in (theirs, ours):
        p = torch.nn.Parameter(torch.randn(3, device=device))
        loss = (p * p).sum()  # saves p
        p.grad = torch.ones_like(p)
        opt = cls([p], lr=0.1, momentum=0.9) if cls in (torch.optim.SGD, fastopt.optim.SGD) else cls([p], lr=0.1)
        before = p._version
        opt.step()
        assert p._version > before
        with pytest.raises(RuntimeError, match=STALE):
            loss.backward()


def test_state_writes_are_counted(device):
    p = torch.nn.Parameter(torch.randn(3, device=device))
    opt = fastopt.optim.Adam([p])
    p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state[p]
    versions = {k: v._version for k, v in state.items()}
    opt.step()
    assert all(state[k]._version > v for k, v in versions.items())


def test_ema_update_counts_its_writes(device):
    model = torch.nn.Linear(3, 2).to(device)
    ema = fastopt.optim.EMA(model.parameters(), decay=0.9)
    before = [t._version for t in ema.shadow]
    ema.update()
    assert all(t._version > v for t, v in zip(ema.shadow, before))


def test_in_place_dropout_of_a_saved_tensor_fails_backward_as_in_torch(device):
    for drop in (torch.nn.Dropout(0.5, inplace=True), fastopt.nn.Dropout(0.5, inplace=True)):
        w = torch.randn(8, device=device, requires_grad=True)
        x = torch.randn(8, device=device)
        y = w * x  # saves x for w's gradient
        drop(x)
        assert x._version == 1
        with pytest.raises(RuntimeError, match=STALE):
            y.sum().backward()


def test_in_place_dropout_of_an_inference_tensor_is_refused(device):
    with torch.inference_mode():
        x = torch.randn(8, device=device)
    kept = x.clone()
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        FF.dropout(x, 0.5, inplace=True)
    assert torch.equal(x, kept)  # counted before anything is written


def test_in_place_dropout_op_refuses_forward_mode_ad(device):
    """The op has no forward-mode formula, so it refuses a dual tensor rather than
    leave its tangent unscaled. (In a dual level the functional is torch's dropout:
    tests/nn/test_func_transforms.py.)"""
    import torch.autograd.forward_ad as fwAD

    seed = torch.tensor([1, 2], device=device)
    with fwAD.dual_level():
        x = fwAD.make_dual(torch.randn(8, device=device), torch.ones(8, device=device))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            torch.ops.fastopt.dropout_(x, seed, 0.5)


def test_direct_in_place_op_refuses_a_tensor_that_needs_grad(device):
    x = torch.randn(8, device=device, requires_grad=True)
    seed = torch.tensor([1, 2], device=device)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        torch.ops.fastopt.dropout_(x, seed, 0.5)
    with torch.no_grad():  # as every other in-place op: fine without grad mode
        torch.ops.fastopt.dropout_(x, seed, 0.5)


def test_every_mutating_op_counts_its_writes():
    """A new mutating op must be added to the list in inplace_versions.cpp."""
    missing = []
    for name in torch.ops.fastopt:
        packet = getattr(torch.ops.fastopt, name)
        for overload in packet.overloads():
            op = getattr(packet, overload)
            writes = any(a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments)
            full = f"fastopt::{name}" + ("" if overload == "default" else f".{overload}")
            # batch_norm_fwd counts its running statistics in its autograd kernel.
            if writes and name != "batch_norm_fwd" and not torch._C._dispatch_has_kernel_for_dispatch_key(
                full, "ADInplaceOrView"
            ):
                missing.append(full)
    assert not missing


def test_batch_norm_without_history_counts_its_buffer_writes(device):
    """Under no_grad the autograd kernel skips its Function (NOTE: [forward without
    history] in csrc/autograd/common.h); the running estimates' writes still count."""
    bn = fastopt.nn.BatchNorm2d(3).to(device)
    before = (bn.running_mean._version, bn.running_var._version)
    with torch.no_grad():
        y = bn(torch.randn(4, 3, 5, 5, device=device))
    assert y.grad_fn is None
    assert bn.running_mean._version > before[0] and bn.running_var._version > before[1]


def test_ops_without_history_still_refuse_forward_mode_ad(device):
    """A dual tensor keeps the Function path and its refusal, under no_grad too
    (no_grad does not turn forward-mode AD off)."""
    import torch.autograd.forward_ad as fwAD

    seed = torch.tensor([1, 2], device=device)
    with fwAD.dual_level(), torch.no_grad():
        x = fwAD.make_dual(torch.randn(4, 6, 3, device=device), torch.ones(4, 6, 3, device=device))
        calls = [
            lambda: torch.ops.fastopt.group_norm_fwd(x, None, None, 2, 1e-5, 0),
            lambda: torch.ops.fastopt.dropout(x, seed, 0.5, 1),
            lambda: torch.ops.fastopt.dropout_bits(x, seed, 0.5),
        ]
        for call in calls:
            with pytest.raises(RuntimeError, match="jvp is not implemented"):
                call()
