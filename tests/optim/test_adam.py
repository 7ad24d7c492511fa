"""fastopt.optim.Adam/AdamW against torch.optim.Adam/AdamW(foreach=False)."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import fastopt
from fastopt.optim import Adam, AdamW

from .reference import (
    PARAM_SET,
    assert_same_error,
    assert_same_state,
    check_low_precision,
    clone_params,
    make_params,
    random_grads,
    run_steps,
    set_grads,
)

PAIRS = [(Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)]
STEPS = 10

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


def _skip_bias_grad(i: int, step: int) -> bool:
    # The "bias" param gets no grad on some steps: it must be left alone and
    # its step counter must lag, as in torch.
    return PARAM_SET[i][0] == "bias" and step in (3, 7)


def _compare(pair, config, device, dtype, steps=STEPS):
    ours_cls, ref_cls = pair
    ref_params = make_params(device, dtype)
    ours_params = clone_params(ref_params)
    cfg = {k: (v.to(device) if isinstance(v, torch.Tensor) and config.get("capturable") else v) for k, v in config.items()}
    ref = ref_cls(ref_params, foreach=False, **copy.deepcopy(cfg))
    ours = ours_cls(ours_params, **copy.deepcopy(cfg))
    grads = random_grads(ref_params, steps, _skip_bias_grad)
    run_steps(ref, ref_params, grads)
    run_steps(ours, ours_params, grads)
    tol = {}
    if isinstance(config.get("lr"), torch.Tensor) and dtype == torch.float64:
        # torch computes lr / (1 - beta1^t) in the lr tensor's dtype (float32)
        # and fastopt in float64, so the two agree only to float32 precision.
        tol = {"rtol": 1.3e-6, "atol": 1e-5}
    assert_same_state(ours, ref, ours_params, ref_params, **tol)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("config", CONFIGS + CUDA_CONFIGS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_torch(pair, config, dtype, device):
    if config.get("capturable") and device != "cuda":
        pytest.skip("capturable is a CUDA configuration")
    _compare(pair, config, device, dtype)


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_every_cpu_kernel_variant(isa):
    """Each compiled instruction-set variant gives torch's result."""
    if ["default", "avx2", "avx512"].index(isa) > ["default", "avx2", "avx512"].index(
        fastopt.build_info()["cpu_capability_best"]
    ):
        pytest.skip(f"this CPU does not support {isa}")
    previous = fastopt.build_info()["cpu_capability"]
    fastopt._C._set_cpu_capability(isa)
    try:
        assert fastopt.build_info()["cpu_capability"] == isa
        for dtype in (torch.float32, torch.float64):
            _compare(PAIRS[1], {"weight_decay": 0.1, "amsgrad": True}, "cpu", dtype, steps=3)
        _check_low_precision(PAIRS[0], torch.bfloat16, "cpu", {"weight_decay": 0.1})
    finally:
        fastopt._C._set_cpu_capability(previous)


def _check_low_precision(pair, dtype, device, config):
    # torch's fused=True is its most accurate 16-bit path here: it computes in
    # float32 like fastopt, while the for-loop path computes in 16-bit and goes
    # to NaN in float16 once eps=1e-8 underflows.
    check_low_precision(*pair, dtype, device, config, torch_kwargs={"fused": True}, steps=STEPS)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[0].__name__)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("config", [{}, {"weight_decay": 0.1, "amsgrad": True, "lr": 0.01}], ids=repr)
def test_low_precision_error_within_twice_torch(pair, dtype, config, device):
    _check_low_precision(pair, dtype, device, config)


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
    ours_cls, ref_cls = pair
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert_same_error(lambda: ref_cls(params, **kwargs), lambda: ours_cls(params, **kwargs))


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
    torch.manual_seed(1)
    x = torch.randn(32, 5, device=device)
    y = torch.randn(32, 1, device=device)
    results = []
    for cls in (torch.optim.Adam, Adam):
        model = torch.nn.Linear(5, 1).to(device)
        torch.nn.init.constant_(model.weight, 0.1)
        torch.nn.init.zeros_(model.bias)
        kw = {"foreach": False} if cls is torch.optim.Adam else {}
        opt = cls(model.parameters(), lr=0.05, **kw)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses = [opt.step(closure).item() for _ in range(5)]
        results.append((losses, model.weight.detach().clone()))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.parametrize("direction", ["torch_to_fastopt", "fastopt_to_torch"])
def test_state_dict_round_trip(direction, device):
    """Train 4 steps with one, save, load into the other, train 6 more: same as all-torch."""
    grads = None
    ref_params = make_params(device, torch.float32)
    ref = torch.optim.Adam(ref_params, foreach=False, amsgrad=True, weight_decay=0.1)
    grads = random_grads(ref_params, STEPS, _skip_bias_grad)
    run_steps(ref, ref_params, grads)

    first_cls, second_cls = (torch.optim.Adam, Adam) if direction == "torch_to_fastopt" else (Adam, torch.optim.Adam)
    params = clone_params(make_params(device, torch.float32))
    # same starting point as the reference
    torch.manual_seed(0)
    start = make_params(device, torch.float32)
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    first = first_cls(params, amsgrad=True, weight_decay=0.1)
    run_steps(first, params, grads[:4])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = second_cls(params, amsgrad=True, weight_decay=0.1)
    second.load_state_dict(torch.load(buffer))
    assert second.state_dict()["param_groups"] == first.state_dict()["param_groups"]
    run_steps(second, params, grads[4:])
    assert_same_state(second, ref, params, ref_params)


def test_grad_scale_and_found_inf(device):
    """AMP's protocol: grads are unscaled in place, and found_inf skips the whole step."""
    params = make_params(device, torch.float32, ["non_aligned", "transposed", "bias"])
    ref_params = clone_params(params)
    grads = random_grads(params, 1)[0]
    scale = torch.tensor(1024.0, device=device)

    ours = Adam(params, weight_decay=0.1)
    ref = torch.optim.Adam(ref_params, weight_decay=0.1, foreach=False)
    set_grads(params, [g * scale for g in grads])
    set_grads(ref_params, grads)
    ours.grad_scale, ours.found_inf = scale, torch.tensor(0.0, device=device)
    ours.step()
    ref.step()
    assert_same_state(ours, ref, params, ref_params)
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, g)  # unscaled in place

    # a skipped step changes nothing, step counters included
    before = copy.deepcopy(ours.state_dict())
    values = [p.detach().clone() for p in params]
    set_grads(params, [g * scale for g in grads])
    scaled = [p.grad.clone() for p in params]
    ours.found_inf = torch.tensor(1.0, device=device)
    ours.step()
    for p, v, g in zip(params, values, scaled):
        assert torch.equal(p, v)
        assert torch.equal(p.grad, g)
    after = ours.state_dict()
    for i, s in before["state"].items():
        for k, v in s.items():
            assert torch.equal(after["state"][i][k], v), (i, k)


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
    ref_params = [torch.nn.Parameter(torch.randn(33, dtype=torch.complex64, device=device))]
    ours_params = clone_params(ref_params)
    grads = random_grads(ref_params, 5)
    ref = torch.optim.Adam(ref_params, foreach=False, weight_decay=0.1)
    ours = Adam(ours_params, weight_decay=0.1)
    run_steps(ref, ref_params, grads)
    run_steps(ours, ours_params, grads)
    assert_same_state(ours, ref, ours_params, ref_params)


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
    for step_grads in random_grads(params, 3, _skip_bias_grad):
        set_grads(params, step_grads)
        before = {p: p.detach().double().clone() for p in params}
        opt.step()
        ratios = opt.update_ratios()
        updated = [p for p in params if p.grad is not None]
        assert set(ratios) == set(updated)
        for p in updated:
            want = (p.detach().double() - before[p]).norm() / before[p].norm()
            torch.testing.assert_close(ratios[p], want, rtol=1e-5, atol=0, equal_nan=True)
