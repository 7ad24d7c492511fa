"""One op call per step across param groups (NOTE: [hyperparameter table]).

With a learning rate per layer, a model has hundreds of param groups.
fastopt merges the tensors of all groups that share a kernel layout into one
op call, with a per-tensor table of hyperparameters (on CUDA, read by the
kernels from device memory); these tests check the result against torch and
count the op calls, and on CUDA the kernel launches, with the profiler.
"""

from __future__ import annotations

import pytest
import torch

from fastopt.optim import SGD, Adagrad, Adam, AdamW, RMSprop
from fastopt.optim._base import _hparams_readable

from .reference import assert_same_state, clone_params, random_grads, set_grads

# Per group, every hyperparameter that goes into the table differs.
OPTIMIZERS = [
    (Adam, torch.optim.Adam, "adam_", lambda i: {"lr": 1e-3 * (1 + i), "betas": (0.9 - 0.01 * i, 0.999 - 0.001 * i), "weight_decay": 0.01 * (i % 3), "eps": 1e-8 * (1 + i)}),
    (AdamW, torch.optim.AdamW, "adam_", lambda i: {"lr": 1e-3 * (1 + i), "weight_decay": 0.02 * i}),
    (SGD, torch.optim.SGD, "sgd_", lambda i: {"lr": 0.01 * (1 + i), "momentum": 0.5 + 0.05 * i, "dampening": 0.1 * (i % 2), "weight_decay": 0.01 * i}),
    (Adagrad, torch.optim.Adagrad, "adagrad_", lambda i: {"lr": 0.01 * (1 + i), "lr_decay": 0.01 * i, "weight_decay": 0.01 * (i % 2), "eps": 1e-10 * (1 + i)}),
    (RMSprop, torch.optim.RMSprop, "rmsprop_", lambda i: {"lr": 0.001 * (1 + i), "alpha": 0.9 + 0.01 * i, "eps": 1e-8 * (1 + i), "weight_decay": 0.01 * i, "momentum": 0.1 * (1 + i)}),
]
IDS = [o[0].__name__ for o in OPTIMIZERS]
SHAPES = [(7,), (64, 3), (), (1000,), (5, 5), (130,)]


def _groups(params, hparams):
    return [{"params": [p], **hparams(i)} for i, p in enumerate(params)]


def _op_calls(opt: torch.optim.Optimizer, op: str) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    return sum(e.count for e in prof.key_averages() if e.key == f"fastopt::{op}")


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=IDS)
def test_many_groups_match_torch_in_one_call(opt, device):
    ours_cls, ref_cls, op, hparams = opt
    ref_params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in SHAPES]
    ours_params = clone_params(ref_params)
    ref = ref_cls(_groups(ref_params, hparams), foreach=False)
    ours = ours_cls(_groups(ours_params, hparams))
    grads = random_grads(ref_params, 6)
    for step_grads in grads[:-1]:
        set_grads(ref_params, step_grads)
        set_grads(ours_params, step_grads)
        ref.step()
        ours.step()
    set_grads(ref_params, grads[-1])
    set_grads(ours_params, grads[-1])
    ref.step()
    # one call for the six groups: the launch-count claim, counted
    assert _op_calls(ours, op) == 1
    assert_same_state(ours, ref, ours_params, ref_params)


def test_groups_with_different_layouts_get_one_call_each(device):
    """amsgrad changes the state lists, so it splits the call; lr does not."""
    params = [torch.nn.Parameter(torch.randn(10, device=device)) for _ in range(6)]
    groups = [{"params": [p], "lr": 0.01 * (i + 1), "amsgrad": i % 2 == 0} for i, p in enumerate(params)]
    opt = Adam(groups)
    set_grads(params, [torch.randn(10, device=device) for _ in params])
    opt.step()
    assert _op_calls(opt, "adam_") == 2


def test_interleaved_layouts_and_dtypes_match_torch(device):
    """Groups whose first tensor continues the previous group's bucket, and
    groups that go back to an earlier one (amsgrad alternating, a float64
    tensor inside a group and a float64 group between float32 ones), each
    tensor with its own group's hyperparameters."""
    spec = [
        (False, [torch.float32]),
        (True, [torch.float32, torch.float64]),
        (True, [torch.float32]),
        (False, [torch.float64]),
        (False, [torch.float32, torch.float32]),
        (True, [torch.float64, torch.float32]),
    ]
    ref_params = [[torch.nn.Parameter(torch.randn(9, device=device, dtype=dt)) for dt in dts] for _, dts in spec]
    ours_params = [clone_params(ps) for ps in ref_params]

    def groups(params: list[list[torch.nn.Parameter]]) -> list[dict]:
        return [{"params": ps, "amsgrad": ams, "lr": 0.01 * (i + 1)} for i, (ps, (ams, _)) in enumerate(zip(params, spec))]

    ref, ours = torch.optim.Adam(groups(ref_params), foreach=False), Adam(groups(ours_params))
    flat_ref, flat_ours = sum(ref_params, []), sum(ours_params, [])
    for step_grads in random_grads(flat_ref, 4):
        set_grads(flat_ref, step_grads)
        set_grads(flat_ours, step_grads)
        ref.step()
        ours.step()
    assert_same_state(ours, ref, flat_ours, flat_ref)


def _four_hundred_groups(device: str) -> tuple[AdamW, list[torch.nn.Parameter]]:
    params = [torch.nn.Parameter(torch.randn(16, device=device)) for _ in range(400)]
    opt = AdamW([{"params": [p], "lr": 1e-3 * 0.99**i} for i, p in enumerate(params)])
    set_grads(params, [torch.randn(16, device=device) for _ in params])
    opt.step()
    set_grads(params, [torch.randn(16, device=device) for _ in params])
    return opt, params


def test_four_hundred_groups_one_call(device):
    opt, _ = _four_hundred_groups(device)
    assert _op_calls(opt, "adam_") == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA kernel launches")
def test_four_hundred_groups_one_kernel_launch():
    """The launch-count claim on CUDA: all 400 groups' updates in one kernel
    (NOTE: [kernel argument budget]), next to one launch that advances the
    400 step counters (NOTE: [step counters])."""
    opt, params = _four_hundred_groups("cuda")
    # A second step with the same lrs reuses the device copy of the table.
    before = [p.detach().clone() for p in params]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    updates = [k for k in kernels if "multi_tensor_apply_kernel" in k]
    step_counters = [k for k in kernels if "increment_steps_kernel" in k]
    assert len(updates) == 1, kernels
    assert len(step_counters) == 1, kernels
    # no host-to-device copy of the table: its device copy was kept
    assert not [e for e in prof.events() if "Memcpy HtoD" in e.name], kernels
    # and the launch did update all 400 tensors, each with its own lr
    assert all(not torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert all(opt.state[p]["step"].item() == 2 for p in params)


def test_merged_groups_equal_one_optimizer_per_group(device):
    """A merged call reads per tensor what separate calls get as scalar arguments."""
    params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in SHAPES]
    other = clone_params(params)
    config = [{"lr": 1e-2 * (1 + i), "betas": (0.9, 0.99 - 0.01 * i), "weight_decay": 0.1 * i} for i in range(len(params))]
    merged = Adam([{"params": [p], **c} for p, c in zip(params, config)])
    separate = [Adam([q], **c) for q, c in zip(other, config)]
    for step_grads in random_grads(params, 3):
        set_grads(params, step_grads)
        set_grads(other, step_grads)
        assert _op_calls(merged, "adam_") == 1  # one step, profiled
        for opt in separate:
            opt.step()
    for p, q, opt in zip(params, other, separate):
        # the same math on the same scalars (a table row holds the same doubles)
        assert torch.equal(p, q)
        assert torch.equal(merged.state[p]["exp_avg_sq"], opt.state[q]["exp_avg_sq"])


def test_table_follows_changing_hyperparameters(device):
    """The table is kept between steps only while its rows and their tensors stay the same.

    A per-group scheduler changes every lr each step, a direct edit changes one
    group's betas, and a parameter without a gradient shifts which rows go to
    which tensors: each must reach the kernel, as torch sees it.
    """
    ref_params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in SHAPES]
    ours_params = clone_params(ref_params)
    config = [{"lr": 1e-2 * (1 + i), "weight_decay": 0.01 * i} for i in range(len(SHAPES))]
    ref = torch.optim.Adam([{"params": [p], **c} for p, c in zip(ref_params, config)], foreach=False)
    ours = Adam([{"params": [p], **c} for p, c in zip(ours_params, config)])
    decay = [lambda step, i=i: 0.9 ** (step * (i + 1)) for i in range(len(SHAPES))]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (ref, ours)]
    tables = []
    for step, step_grads in enumerate(random_grads(ref_params, 8)):
        if step == 5:  # the schedule stops: the next steps keep one table
            schedulers = []
        if step == 3:
            for o in (ref, ours):
                o.param_groups[2]["betas"] = (0.5, 0.9)
        if step == 4:  # one step without a gradient for the second tensor
            step_grads = [None if i == 1 else g for i, g in enumerate(step_grads)]
        set_grads(ref_params, step_grads)
        set_grads(ours_params, step_grads)
        ref.step()
        ours.step()
        for s in schedulers:
            s.step()
        assert_same_state(ours, ref, ours_params, ref_params)
        (table,) = (t for *_, t in ours.__dict__["_hparams_tables"].values())
        tables.append(table)
    assert len({id(t) for t in tables[:6]}) == 6  # rebuilt while the lrs moved
    assert tables[5] is tables[6] is tables[7]  # and kept once they stopped


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA tensor hyperparameters")
def test_groups_with_cuda_tensor_lr_keep_their_own_calls():
    """Reading a CUDA lr into a table would synchronise: such groups are not merged."""
    params = [torch.nn.Parameter(torch.randn(10, device="cuda")) for _ in range(3)]
    opt = Adam([{"params": [p], "lr": torch.tensor(1e-2 * (i + 1), device="cuda")} for i, p in enumerate(params)])
    set_grads(params, [torch.randn(10, device="cuda") for _ in params])
    assert _op_calls(opt, "adam_") == 3


def test_hparams_table_errors(device):
    p = [torch.zeros(3, device=device)]
    kw = dict(lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, eps=1e-8, amsgrad=False,
              maximize=False, decoupled_weight_decay=False)  # fmt: skip
    z = [torch.zeros(3, device=device)]
    lists = (p, z, z, z, [], [torch.tensor(0.0, device=device)])
    with pytest.raises(RuntimeError, match=r"hparams must have shape \[1, 5\]"):
        torch.ops.fastopt.adam_(*lists, hparams=torch.zeros(1, 4, dtype=torch.float64), **kw)
    with pytest.raises(TypeError, match="hparams must be float64"):
        torch.ops.fastopt.adam_(*lists, hparams=torch.zeros(1, 5), **kw)
    if device == "cpu" and torch.cuda.is_available():
        # CPU params read their table on the CPU
        with pytest.raises(RuntimeError, match="hparams must be on the CPU or on the params' device"):
            torch.ops.fastopt.adam_(*lists, hparams=torch.zeros(1, 5, dtype=torch.float64, device="cuda"), **kw)


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=IDS)
def test_zero_weight_decay_adds_nothing_to_an_inf_parameter(opt, device):
    """Weight decay is per group, as in torch: a group with weight_decay=0 merged
    with decaying groups must not see 0 * inf = NaN from the decay term."""
    ours_cls, ref_cls, _, _ = opt
    ref_params = [torch.nn.Parameter(torch.randn(8, device=device)) for _ in range(2)]
    with torch.no_grad():
        ref_params[1][3] = float("inf")
    ours_params = clone_params(ref_params)
    groups = lambda ps: [{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]], "weight_decay": 0.0}]  # noqa: E731
    ref, ours = ref_cls(groups(ref_params), foreach=False), ours_cls(groups(ours_params))
    grads = [torch.randn(8, device=device) for _ in range(2)]
    set_grads(ref_params, grads)
    set_grads(ours_params, grads)
    ref.step()
    ours.step()
    assert not ours_params[1].isnan().any()
    torch.testing.assert_close(ours_params[1], ref_params[1])


def test_hparams_readable_looks_at_every_tensor():
    """The check that keeps a group with GPU-tensor hyperparameters out of the table
    (meta tensors stand in for GPU ones: any device but the CPU)."""
    meta = lambda v: torch.tensor(v, device="meta")  # noqa: E731
    group = {"params": [meta(0.0)], "lr": 0.1, "betas": (0.9, 0.99), "amsgrad": False, "foreach": None, "name": "x"}
    assert _hparams_readable(group, on_cpu=False, compiling=False)  # the params are not hyperparameters
    assert not _hparams_readable(dict(group, lr=meta(0.1)), on_cpu=False, compiling=False)
    assert not _hparams_readable(dict(group, betas=(meta(0.9), 0.99)), on_cpu=False, compiling=False)
    assert not _hparams_readable(dict(group, betas=[0.9, meta(0.99)]), on_cpu=False, compiling=False)
    assert _hparams_readable(dict(group, lr=torch.tensor(0.1)), on_cpu=False, compiling=False)  # no sync to read
    # Under torch.compile no tensor is read, on any device; plain values still are.
    assert not _hparams_readable(dict(group, lr=torch.tensor(0.1)), on_cpu=True, compiling=True)
    assert _hparams_readable(group, on_cpu=True, compiling=True)
