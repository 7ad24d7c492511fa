"""CPU results do not depend on the number of intra-op threads.

Reductions are cut into blocks by the data's size, never by the thread count,
and each block's partial result has its own slot, added in a fixed order
(csrc/cpu/multi_tensor_apply.h, batch_norm.cpp, group_norm.cpp). So a run is
bit for bit the same on 1, 2 or 3 threads: a checkpoint resumed on another
machine continues the same trajectory.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import fastopt.nn
import fastopt.optim

THREADS = (1, 2, 3)


def _norm_results(make: Callable[[], torch.nn.Module], shape: tuple[int, ...], channels_last: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    module = make()
    x = torch.randn(shape) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = module(x)
    y.backward(torch.randn_like(y))
    grads = [p.grad for p in module.parameters()]
    return [y.detach(), x.grad, *grads, *module.buffers()]


# Sizes past the blocks the CPU kernels split a reduction into (64 blocks of
# rows or samples), with odd spatial sizes.
NORMS = {
    "batch_norm": (lambda: fastopt.nn.BatchNorm2d(24), (70, 24, 5, 7)),
    "group_norm": (lambda: fastopt.nn.GroupNorm(6, 24), (70, 24, 5, 7)),
    "instance_norm": (lambda: fastopt.nn.InstanceNorm2d(24, affine=True, track_running_stats=True), (70, 24, 5, 7)),
    "layer_norm": (lambda: fastopt.nn.LayerNorm(301), (700, 301)),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("norm", NORMS)
def test_norms_are_bit_identical_on_any_thread_count(norm, channels_last, restore_threads):
    make, shape = NORMS[norm]
    if channels_last and len(shape) != 4:
        pytest.skip("a 2-D input has no channels-last layout")
    runs = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        runs.append(_norm_results(make, shape, channels_last))
    for threads, run in zip(THREADS[1:], runs[1:]):
        for k, (got, want) in enumerate(zip(run, runs[0])):
            assert torch.equal(got, want), (norm, threads, k)


OPTIMIZERS = {
    "SGD": lambda ps: fastopt.optim.SGD(ps, lr=0.1, momentum=0.9, max_grad_norm=1.0),
    "Adam": lambda ps: fastopt.optim.Adam(ps, lr=0.01, max_grad_norm=1.0),
    "RMSprop": lambda ps: fastopt.optim.RMSprop(ps, lr=0.01, centered=True, momentum=0.5),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_steps_are_bit_identical_on_any_thread_count(name, restore_threads):
    """Parameters, state, the fused gradient clipping's norm and the update
    ratios (all reductions over many chunks of many tensors)."""
    runs = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n)) for n in (300_001, 70_000, 17, 1)]
        opt = OPTIMIZERS[name](params)
        opt.track_update_ratios()
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        ratios = opt.update_ratios()
        norm = fastopt.optim.clip_grad_norm_(params, 0.5)
        state = [t for p in params for t in opt.state[p].values() if isinstance(t, torch.Tensor)]
        runs.append([*params, *state, norm, *(ratios[p] for p in params)])
    for threads, run in zip(THREADS[1:], runs[1:]):
        assert len(run) == len(runs[0])
        for k, (got, want) in enumerate(zip(run, runs[0])):
            assert torch.equal(got, want), (name, threads, k)
