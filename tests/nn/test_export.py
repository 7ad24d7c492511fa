"""torch.export of models built from fastopt modules: fastopt's ops in the graph, eager results."""

from __future__ import annotations

import copy

import pytest
import torch

import fastopt.nn


def _model() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        fastopt.nn.BatchNorm2d(4),
        fastopt.nn.GroupNorm(2, 4),
        fastopt.nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
        fastopt.nn.Dropout(0.3),
        torch.nn.Flatten(),
        fastopt.nn.LayerNorm(4 * 6 * 6),
    )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_exported_program_matches_eager(device, training):
    """The exported graph calls fastopt's ops (not torch's decompositions), and
    running it gives eager's output, dropout mask (same seed) and running
    statistics. The batch size is exported as a dynamic dimension."""
    torch.manual_seed(0)
    model = _model().to(device).train(training)
    eager = copy.deepcopy(model)
    x = torch.randn(5, 3, 8, 8, device=device)
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    fastopt_ops = {op.split(".")[1] for op in ops if op.startswith("fastopt.")}
    # BatchNorm, then GroupNorm for GroupNorm, InstanceNorm and LayerNorm; dropout in training.
    expected = {"batch_norm_fwd", "group_norm_fwd", "dropout"} if training else {"batch_norm_eval", "group_norm_fwd"}
    assert fastopt_ops == expected, ops
    # In evaluation InstanceNorm with running statistics is torch's own (a
    # per-channel affine map, which fastopt leaves to torch); no other torch norm.
    torch_ok = set() if training else {"aten.instance_norm.default"}
    assert {op for op in ops if "norm" in op and not op.startswith("fastopt.")} == torch_ok, ops
    exported = program.module()
    for n in (5, 7):  # the traced size and another
        x = torch.randn(n, 3, 8, 8, device=device)
        torch.manual_seed(n)
        got = exported(x)
        torch.manual_seed(n)
        want = eager(x)
        torch.testing.assert_close(got, want)
    buffers = dict(eager.named_buffers())
    for name, value in exported.named_buffers():
        torch.testing.assert_close(value, buffers[name], msg=lambda m, name=name: f"{name}: {m}")
