"""fastopt optimizers under torch.distributed: DDP and ZeroRedundancyOptimizer.

Two CPU processes on the gloo backend over loopback train a small model on
halves of each batch. DDP averages their gradients, so the result must equal
one process training on the whole batch with torch.optim.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import fastopt.optim

WORLD_SIZE = 2
STEPS = 5

# (fastopt class, torch class, hyperparameters)
OPTIMIZERS = [
    (fastopt.optim.Adam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}),
    (fastopt.optim.AdamW, torch.optim.AdamW, {"lr": 0.01, "amsgrad": True}),
]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(STEPS)]


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, shard: slice) -> None:
    for x, y in _batches():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[shard]), y[shard]).backward()
        opt.step()


def _worker(rank: int, port: int, mode: str, index: int, out_dir: str) -> None:
    # A bounded timeout: should a peer die (or another test run grab the
    # port between _free_port and here), the survivor fails instead of
    # waiting out gloo's 30-minute default.
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        fastopt_cls, _, hyper = OPTIMIZERS[index]
        model = DistributedDataParallel(_model())
        if mode == "ddp":
            opt: Any = fastopt_cls(model.parameters(), **hyper)
        else:
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=fastopt_cls, **hyper)
        half = 8 // WORLD_SIZE
        _train(model, opt, slice(rank * half, (rank + 1) * half))
        if rank == 0:
            torch.save([p.detach() for p in model.module.parameters()], os.path.join(out_dir, "params.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "zero"])
@pytest.mark.parametrize("index", range(len(OPTIMIZERS)), ids=[o[0].__name__ for o in OPTIMIZERS])
def test_two_process_training_matches_single_process_torch(mode, index):
    _, torch_cls, hyper = OPTIMIZERS[index]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(_free_port(), mode, index, out_dir), nprocs=WORLD_SIZE, join=True)
        distributed = torch.load(os.path.join(out_dir, "params.pt"))

    model = _model()
    _train(model, torch_cls(model.parameters(), foreach=False, **hyper), slice(None))
    for got, want in zip(distributed, model.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
