"""fastopt.nn.SyncBatchNorm on two CPU processes (gloo over loopback).

Each process normalizes half of every batch; with statistics reduced across
the two, outputs, input gradients and running statistics must equal one
process running a plain BatchNorm over the whole batch, and the sum of the
processes' (local) weight and bias gradients must equal its gradients.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

import fastopt.nn

from .processes import WORLD_SIZE, init, run

STEPS = 3
C = 5

# (name, batch shape, memory format, module kwargs)
CASES = [
    ("nchw", (8, C, 4, 3), torch.contiguous_format, {}),
    ("nhwc-momentum-none", (8, C, 4, 3), torch.channels_last, {"momentum": None}),
    ("1d-uneven", (7, C), torch.contiguous_format, {}),  # 4 + 3 rows: unequal local counts
]


def _batches(shape, fmt):
    gen = torch.Generator().manual_seed(1)
    return [
        (
            (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 3).float().contiguous(memory_format=fmt),
            torch.randn(shape, generator=gen).contiguous(memory_format=fmt),
        )
        for _ in range(STEPS)
    ]


def _module(kwargs):
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(C, **kwargs)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    return bn


def _shard(n: int, rank: int) -> slice:
    half = (n + 1) // WORLD_SIZE
    return slice(0, half) if rank == 0 else slice(half, n)


def _run(module, batches, shard):
    """Per step: output, dx, dweight, dbias; and the final buffers."""
    results = []
    for x, grad in batches:
        module.zero_grad()
        xs = x[shard].detach().clone().requires_grad_()
        y = module(xs)
        y.backward(grad[shard])
        results.append((y.detach(), xs.grad, module.weight.grad.clone(), module.bias.grad.clone()))
    return results, {k: v.clone() for k, v in module.named_buffers()}


def _worker(rank: int, port: int, index: int, out_dir: str) -> None:
    init(rank, port)
    try:
        _, shape, fmt, kwargs = CASES[index]
        model = fastopt.nn.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(_module(kwargs)))
        assert type(model[0]) is fastopt.nn.SyncBatchNorm
        results = _run(model[0], _batches(shape, fmt), _shard(shape[0], rank))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_two_processes_match_one_batch_norm_over_the_whole_batch(index):
    _, shape, fmt, kwargs = CASES[index]
    with tempfile.TemporaryDirectory() as out_dir:
        run(_worker, index, out_dir)
        ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD_SIZE)]

    ref = _module(kwargs)
    if len(shape) == 2:
        ref = torch.nn.BatchNorm1d(C, **kwargs)
        ref.load_state_dict(_module(kwargs).state_dict())
    expected, expected_buffers = _run(ref, _batches(shape, fmt), slice(None))
    for step, (y, dx, dw, db) in enumerate(expected):
        got = [ranks[r][0][step] for r in range(WORLD_SIZE)]
        torch.testing.assert_close(torch.cat([g[0] for g in got]), y)
        torch.testing.assert_close(torch.cat([g[1] for g in got]), dx)
        # Local parameter gradients: DDP sums (then averages) them across processes.
        torch.testing.assert_close(sum(g[2] for g in got), dw)
        torch.testing.assert_close(sum(g[3] for g in got), db)
    for r in range(WORLD_SIZE):
        for name, value in expected_buffers.items():
            torch.testing.assert_close(ranks[r][1][name], value)


def test_without_process_group_is_plain_batch_norm():
    """No process group initialised: SyncBatchNorm is a BatchNorm (as torch's falls back)."""
    ref = _module({})
    sync = fastopt.nn.SyncBatchNorm(C)
    sync.load_state_dict(ref.state_dict())
    x = torch.randn(4, C, 3, 3)
    torch.testing.assert_close(sync(x), ref(x))
    torch.testing.assert_close(sync.running_var, ref.running_var)


def test_convert_sync_batchnorm_keeps_state():
    bn = _module({"momentum": 0.2})
    bn(torch.randn(4, C, 3, 3))
    bn.eval()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, C, 1), torch.nn.Sequential(bn))
    converted = fastopt.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    sync = converted[1][0]
    assert type(sync) is fastopt.nn.SyncBatchNorm and not sync.training
    assert sync.weight is bn.weight and sync.running_mean is bn.running_mean
    assert sync.num_batches_tracked is bn.num_batches_tracked and sync.momentum == 0.2
    assert isinstance(sync, torch.nn.SyncBatchNorm)
