"""DTensor parameters (FSDP2, tensor parallelism) in one process: a one-rank gloo
mesh. fastopt updates each process's shards (fastopt/optim/_dtensor.py); the
two-process FSDP2 run is in test_data_parallel.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

import fastopt.optim

from .processes import free_port

pytest.importorskip("torch.distributed.tensor")
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor  # noqa: E402

OPTIMIZERS = [
    (fastopt.optim.Adam, torch.optim.Adam, {"lr": 0.01, "amsgrad": True}),
    (fastopt.optim.AdamW, torch.optim.AdamW, {"lr": 0.01}),
    (fastopt.optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    (fastopt.optim.RMSprop, torch.optim.RMSprop, {"lr": 0.01, "centered": True}),
    (fastopt.optim.Adagrad, torch.optim.Adagrad, {"lr": 0.1}),
]


@pytest.fixture(scope="module")
def mesh() -> Iterator[object]:
    if not dist.is_available():
        pytest.skip("torch built without distributed")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _params(mesh, dtype=torch.float32) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [
        torch.nn.Parameter(distribute_tensor(torch.randn(8, 5, dtype=dtype), mesh, [Shard(0)])),
        torch.nn.Parameter(distribute_tensor(torch.randn(7, dtype=dtype), mesh, [Replicate()])),
    ]


def _step(opt_cls, hyper, params, steps=3):
    opt = opt_cls(params, **hyper)
    for i in range(steps):
        for p in params:
            p.grad = distribute_tensor(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)).to(p.dtype),
                                       p.device_mesh, p.placements)  # fmt: skip
        opt.step()
    return opt


@pytest.mark.parametrize("index", range(len(OPTIMIZERS)), ids=[o[0].__name__ for o in OPTIMIZERS])
def test_dtensor_parameters_match_torch(mesh, index):
    ours_cls, torch_cls, hyper = OPTIMIZERS[index]
    ours, ref = _params(mesh), _params(mesh)
    ours_opt = _step(ours_cls, hyper, ours)
    ref_opt = _step(torch_cls, {**hyper, "foreach": False}, ref)
    for p, q in zip(ours, ref):
        assert isinstance(p.data, DTensor) and p.placements == q.placements
        torch.testing.assert_close(p.full_tensor(), q.full_tensor())
    # State stays DTensors, with torch's keys, so sharded checkpoints see what they see with torch.
    for p, q in zip(ours, ref):
        mine, theirs = ours_opt.state[p], ref_opt.state[q]
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert type(mine[key]) is type(theirs[key]), key
            if isinstance(theirs[key], DTensor):
                torch.testing.assert_close(mine[key].full_tensor(), theirs[key].full_tensor())


def test_master_weights_of_bfloat16_dtensors(mesh):
    params = _params(mesh, torch.bfloat16)
    opt = _step(fastopt.optim.AdamW, {"lr": 0.01, "master_weights": True}, params)
    for p in params:
        master = opt.state[p]["master_param"]
        assert isinstance(master, DTensor) and master.dtype == torch.float32
        assert torch.equal(p.full_tensor(), master.full_tensor().to(torch.bfloat16))


@pytest.mark.parametrize(
    "option",
    ["max_grad_norm", "skip_nonfinite", "track_update_ratios", "stochastic_rounding"],
)
def test_options_that_need_every_shard_are_refused_before_any_update(mesh, option):
    """A global norm or per-parameter ratios need every shard; stochastic
    rounding would draw each process's words alone, so that the replicas of
    a Replicate parameter drift apart. Refused before anything is written,
    plain parameters of the same step included."""
    plain = torch.nn.Parameter(torch.ones(6, dtype=torch.bfloat16))
    params = [plain, *_params(mesh, torch.bfloat16)]
    kwargs = {"max_grad_norm": 1.0} if option == "max_grad_norm" else {}
    kwargs.update({option: True} if option in ("skip_nonfinite", "stochastic_rounding") else {})
    opt = fastopt.optim.SGD(params, lr=0.1, **kwargs)
    if option == "track_update_ratios":
        opt.track_update_ratios()
    plain.grad = torch.ones(6, dtype=torch.bfloat16)
    for p in params[1:]:
        p.grad = distribute_tensor(torch.ones(p.shape, dtype=p.dtype), p.device_mesh, p.placements)
    with pytest.raises(NotImplementedError, match=f"{option}.* DTensor parameters"):
        opt.step()
    assert torch.equal(plain, torch.ones(6, dtype=torch.bfloat16))


def test_plain_gradient_of_a_dtensor_parameter_is_refused(mesh):
    p = _params(mesh)[0]
    p.grad = torch.zeros(p.shape)
    with pytest.raises(TypeError, match="needs a DTensor gradient"):
        fastopt.optim.SGD([p], lr=0.1).step()


def test_clip_grad_norm_of_dtensor_gradients_is_torch_s(mesh):
    ours, ref = _params(mesh), _params(mesh)
    for p, q in zip(ours, ref):
        p.grad = distribute_tensor(torch.full(p.shape, 3.0), p.device_mesh, p.placements)
        q.grad = distribute_tensor(torch.full(q.shape, 3.0), q.device_mesh, q.placements)
    found_inf = torch.zeros(())
    norm = fastopt.optim.clip_grad_norm_(ours, 1.0, found_inf=found_inf)
    torch.testing.assert_close(norm.full_tensor(), torch.nn.utils.clip_grad_norm_(ref, 1.0).full_tensor())
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad.full_tensor(), q.grad.full_tensor())
    assert found_inf.item() == 0.0
    ours[0].grad = distribute_tensor(torch.full(ours[0].shape, float("inf")), mesh, [Shard(0)])
    fastopt.optim.clip_grad_norm_(ours, 1.0, found_inf=found_inf)
    assert found_inf.item() == 1.0


def test_ema_of_dtensors(mesh):
    params = _params(mesh)
    ema = fastopt.optim.EMA(params, decay=0.5)
    expected = [p.full_tensor().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    ema.update()
    for s, e, p in zip(ema.shadow, expected, params):
        assert isinstance(s, DTensor)
        torch.testing.assert_close(s.full_tensor(), torch.lerp(e, p.full_tensor(), 0.5))


@pytest.mark.parametrize("index", range(len(OPTIMIZERS)), ids=[o[0].__name__ for o in OPTIMIZERS])
def test_distributed_checkpoint_resumes_an_fsdp2_model(mesh, index, tmp_path):
    """torch.distributed.checkpoint's state-dict helpers (which initialise a
    fresh optimizer's state by stepping it at lr 0) save and load fastopt's
    sharded state; the resumed run steps as the original does."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    ours_cls, _, hyper = OPTIMIZERS[index]

    def make():
        torch.manual_seed(0)
        model = fully_shard(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)), mesh=mesh)
        return model, ours_cls(model.parameters(), **hyper)

    model, opt = make()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp_path))
    resumed, resumed_opt = make()
    model_sd, optim_sd = get_state_dict(resumed, resumed_opt)
    loaded = {"model": model_sd, "optim": optim_sd}
    dcp.load(loaded, checkpoint_id=str(tmp_path))
    set_state_dict(resumed, resumed_opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    x = torch.randn(3, 4)
    for m, o in ((model, opt), (resumed, resumed_opt)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a.full_tensor(), b.full_tensor(), rtol=0, atol=0)
