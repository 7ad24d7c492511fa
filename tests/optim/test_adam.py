"""fastopt.optim.Adam/AdamW against torch.optim.Adam/AdamW(foreach=False)."""

from __future__ import annotations

import pytest
import torch

import fastopt
from fastopt.optim import Adam, AdamW

from .reference import (
    STEPS,
    assert_same_state,
    assert_same_validation_error,
    check_closure,
    check_complex_params,
    check_grad_scale_and_found_inf,
    check_low_precision,
    check_state_dict_round_trip,
    clone_params,
    compare_with_torch,
    make_params,
    random_grads,
    run_steps,
    set_grads,
    skip_bias_grad,
)

from ..cpu_isa import ALL_ISAS, cpu_capability, supported_isas

PAIRS = [(Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)]
# torch's own configuration grid for these optimizers (see torch's
# optim_inputs_func_adam), plus beta1 < 0.5, where torch's lerp switches formula.
CONFIGS = [
    {},
    {"lr": 0.01},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "maximize": True},
    {"weight_decay": 0.1, "amsgrad": True},
    {"amsgrad": True, "maximize": True, "lr": 0.02},
    {"betas": (0.2, 0.5), "eps": 1e-6},
    {"lr": torch.tensor(0.003)},
]
CUDA_CONFIGS = [
    {"capturable": True, "weight_decay": 0.1},
    {"capturable": True, "amsgrad": True, "lr": torch.tensor(0.003)},
]


def _compare(pair, config, device, dtype, steps=STEPS):
    cfg = {k: (v.to(device) if isinstance(v, torch.Tensor) and config.get("capturable") else v) for k, v in config.items()}
    tol = {}
    if isinstance(config.get("lr"), torch.Tensor) and dtype == torch.float64:
        # torch computes lr / (1 - beta1^t) in the lr tensor's dtype (float32)
        # and fastopt in float64, so the two agree only to float32 precision.
        tol = {"rtol": 1.3e-6, "atol": 1e-5}
    compare_with_torch(*pair, cfg, device, dtype, steps, **tol)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("config", CONFIGS + CUDA_CONFIGS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_torch(pair, config, dtype, device):
    if config.get("capturable") and device != "cuda":
        pytest.skip("capturable is a CUDA configuration")
    _compare(pair, config, device, dtype)


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_every_cpu_kernel_variant(isa):
    """Each compiled instruction-set variant gives torch's result."""
    if isa not in supported_isas():
        pytest.skip(f"this CPU does not support {isa}")
    with cpu_capability(isa):
        assert fastopt.build_info()["cpu_capability"] == isa
        for dtype in (torch.float32, torch.float64):
            _compare(PAIRS[1], {"weight_decay": 0.1, "amsgrad": True}, "cpu", dtype, steps=3)
        check_low_precision(*PAIRS[0], torch.bfloat16, "cpu", {"weight_decay": 0.1})


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("config", [{}, {"weight_decay": 0.1, "amsgrad": True, "lr": 0.01}], ids=repr)
def test_low_precision_error_within_twice_torch(pair, dtype, config, device):
    check_low_precision(*pair, dtype, device, config)


def test_is_a_torch_optimizer():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(Adam(p), torch.optim.Adam)
    assert isinstance(AdamW(p), torch.optim.AdamW)
    assert fastopt.Adam is Adam and fastopt.AdamW is AdamW
    assert AdamW(p).defaults == torch.optim.AdamW(p).defaults
    assert Adam(p).defaults == torch.optim.Adam(p).defaults


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1.0},
        {"eps": -1e-8},
        {"betas": (1.0, 0.999)},
        {"betas": (0.9, -0.1)},
        {"weight_decay": -0.1},
        {"lr": torch.tensor([0.1, 0.2])},
        {"fused": True, "foreach": True},
    ],
    ids=repr,
)
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[0].__name__)
def test_validation_errors_match_torch(pair, kwargs):
    assert_same_validation_error(*pair, kwargs)


def test_differentiable_is_refused():
    with pytest.raises(RuntimeError, match="differentiable"):
        Adam([torch.nn.Parameter(torch.zeros(2))], differentiable=True)


def test_sparse_grad_is_refused():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        Adam([p]).step()


def test_param_groups_and_lr_scheduler(device):
    def build(cls, params, **kw):
        opt = cls(
            [{"params": params[:3]}, {"params": params[3:], "lr": 0.03, "weight_decay": 0.2}],
            lr=0.01,
            **kw,
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS)
        return opt, sched

    ref_params = make_params(device, torch.float32)
    ours_params = clone_params(ref_params)
    ref, ref_sched = build(torch.optim.AdamW, ref_params, foreach=False)
    ours, ours_sched = build(AdamW, ours_params)
    grads = random_grads(ref_params, STEPS)
    for step_grads in grads:
        for opt, sched, params in ((ref, ref_sched, ref_params), (ours, ours_sched, ours_params)):
            set_grads(params, step_grads)
            opt.step()
            sched.step()
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in ref.param_groups]
    assert_same_state(ours, ref, ours_params, ref_params)


def test_closure(device):
    check_closure(Adam, torch.optim.Adam, {"lr": 0.05}, device)


@pytest.mark.parametrize("direction", ["torch_to_fastopt", "fastopt_to_torch"])
def test_state_dict_round_trip(direction, device):
    check_state_dict_round_trip(Adam, torch.optim.Adam, {"amsgrad": True, "weight_decay": 0.1}, direction, device)


def test_grad_scale_and_found_inf(device):
    check_grad_scale_and_found_inf(Adam, torch.optim.Adam, {"weight_decay": 0.1, "amsgrad": True}, device)


def test_grad_scaler_end_to_end(device):
    """A GradScaler loop gives the same result as unscaled training."""
    torch.manual_seed(2)
    x = torch.randn(64, 8, device=device)
    y = torch.randn(64, 1, device=device)
    finals = []
    for use_scaler in (False, True):
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(device)
        opt = Adam(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler(device, init_scale=256.0, enabled=use_scaler)
        for _ in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_complex_params_match_torch(device):
    check_complex_params(Adam, torch.optim.Adam, {"weight_decay": 0.1}, device)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and fastopt.build_info()["cuda"]), reason="CUDA graphs need a GPU"
)
@pytest.mark.parametrize("lr", [0.01, torch.tensor(0.01)], ids=["float_lr", "tensor_lr"])
def test_cuda_graph_capture_matches_eager(lr):
    """The whole step (step counters included) replays from a CUDA graph."""
    ref_params = make_params("cuda", torch.float32, ["non_aligned", "channels_last", "bias"])
    params = clone_params(ref_params)
    lr_ref = lr.cuda() if isinstance(lr, torch.Tensor) else lr
    lr_graph = lr.cuda() if isinstance(lr, torch.Tensor) else lr
    ref = AdamW(ref_params, lr=lr_ref, capturable=True, amsgrad=True)
    opt = AdamW(params, lr=lr_graph, capturable=True, amsgrad=True)
    grads = random_grads(ref_params, 8)
    static = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, static):
        p.grad = g
    # warm up on a side stream (allocates state), as CUDA graph capture requires
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for g, new in zip(static, grads[0]):
            g.copy_(new)
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    run_steps(ref, ref_params, grads[:1])
    for step_grads in grads[1:]:
        for g, new in zip(static, step_grads):
            g.copy_(new)
        graph.replay()
    run_steps(ref, ref_params, grads[1:])
    torch.cuda.synchronize()
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q)
    assert opt.state[params[0]]["step"].item() == len(grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_update_ratios_match_direct_computation(device, dtype):
    params = make_params(device, dtype)
    opt = AdamW(params, lr=0.01)
    with pytest.raises(RuntimeError, match="track_update_ratios"):
        opt.update_ratios()
    opt.track_update_ratios()
    for step_grads in random_grads(params, 3, skip_bias_grad):
        set_grads(params, step_grads)
        before = {p: p.detach().double().clone() for p in params}
        opt.step()
        ratios = opt.update_ratios()
        updated = [p for p in params if p.grad is not None]
        assert set(ratios) == set(updated)
        for p in updated:
            change = (p.detach().double() - before[p]).norm()
            # An unchanged parameter (an empty one here) reports 0, not 0 / 0.
            want = change / before[p].norm() if change != 0 else change
            torch.testing.assert_close(ratios[p], want, rtol=1e-5, atol=0)
