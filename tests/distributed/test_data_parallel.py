"""fastopt optimizers under torch.distributed: DDP, ZeroRedundancyOptimizer and FSDP2.

Two CPU processes on the gloo backend over loopback train a small model on
halves of each batch. DDP averages their gradients, so the result must equal
one process training on the whole batch with torch.optim.
"""

from __future__ import annotations

import gc
import os
import tempfile
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import fastopt.optim

from .processes import WORLD_SIZE, init, run

STEPS = 5

# (fastopt class, torch class, hyperparameters)
OPTIMIZERS = [
    (fastopt.optim.Adam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}),
    (fastopt.optim.AdamW, torch.optim.AdamW, {"lr": 0.01, "amsgrad": True}),
    (fastopt.optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (fastopt.optim.RMSprop, torch.optim.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}),
    (fastopt.optim.Adagrad, torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1}),
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


def _train_shard(rank: int, mode: str, index: int, out_dir: str) -> None:
    fastopt_cls, _, hyper = OPTIMIZERS[index]
    if mode == "fsdp2":
        # Parameters become DTensors sharded over the processes; the optimizer
        # updates each process's shards (fastopt/optim/_dtensor.py).
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = fully_shard(_model(), mesh=init_device_mesh("cpu", (WORLD_SIZE,)))
        opt: Any = fastopt_cls(model.parameters(), **hyper)
    else:
        model = DistributedDataParallel(_model())
        if mode == "ddp":
            opt = fastopt_cls(model.parameters(), **hyper)
        else:
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=fastopt_cls, **hyper)
    half = 8 // WORLD_SIZE
    _train(model, opt, slice(rank * half, (rank + 1) * half))
    if mode == "fsdp2":
        params = [p.full_tensor().detach() for p in model.parameters()]
    else:
        params = [p.detach() for p in model.module.parameters()]
    if rank == 0:
        torch.save(params, os.path.join(out_dir, "params.pt"))


def _worker(rank: int, port: int, mode: str, index: int, out_dir: str) -> None:
    init(rank, port)
    try:
        _train_shard(rank, mode, index, out_dir)
        # DDP's C++ Reducer holds the process group, and torch frees a
        # Reducer without releasing the GIL. Were its reference the last one,
        # the gloo destructor would join a worker thread that needs the GIL to
        # free its last finished work item: a deadlock (about 1 run in 6 here,
        # py-spy showed both stacks). DDP sits in reference cycles, so collect
        # it now, while the default group still holds the process group;
        # destroy_process_group then drops the last reference, and torch
        # releases the GIL for that one.
        gc.collect()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["ddp", "zero", "fsdp2"])
@pytest.mark.parametrize("index", range(len(OPTIMIZERS)), ids=[o[0].__name__ for o in OPTIMIZERS])
def test_two_process_training_matches_single_process_torch(mode, index):
    _, torch_cls, hyper = OPTIMIZERS[index]
    with tempfile.TemporaryDirectory() as out_dir:
        run(_worker, mode, index, out_dir)
        distributed = torch.load(os.path.join(out_dir, "params.pt"))

    model = _model()
    _train(model, torch_cls(model.parameters(), foreach=False, **hyper), slice(None))
    for got, want in zip(distributed, model.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
