"""fastopt.optim.RMSprop against torch.optim.RMSprop(foreach=False).

torch has no fused RMSprop, so its for-loop path (_single_tensor_rmsprop) is
the reference: fastopt follows it op by op.
"""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch

import fastopt
from fastopt.optim import RMSprop

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

STEPS = 10

# torch's own grid for RMSprop (optim_inputs_func_rmsprop): each option alone,
# then every combination of centered, momentum, weight_decay and maximize.
SINGLE_CONFIGS = [
    {},
    {"lr": 0.001},
    {"lr": torch.tensor(0.001)},
    {"weight_decay": 0.1},
    {"maximize": True},
    {"centered": True},
    {"momentum": 0.9},
    {"alpha": 0.3, "eps": 1e-6},  # alpha < 0.5: grad_avg's lerp takes its other formula
]
COMBINED_CONFIGS = [
    {"weight_decay": 0.1, "centered": centered, "momentum": momentum, "maximize": maximize}
    for centered, momentum, maximize in itertools.product([False, True], [0.0, 0.9], [False, True])
]
CONFIGS = SINGLE_CONFIGS + COMBINED_CONFIGS

# The million-element "non_aligned" param (several driver chunks, a SIMD tail)
# dominates the run time of torch's for-loop reference, so it runs once per
# single option in float32; the rest of the grid uses every other layout.
SMALL_PARAMS = [name for name, _ in PARAM_SET if name != "non_aligned"]


def _skip_bias_grad(i: int, step: int) -> bool:
    # The "bias" param gets no grad on some steps: it must be left alone and
    # its step counter must lag, as in torch.
    return PARAM_SET[i][0] == "bias" and step in (3, 7)


def _run_pair(config, device, dtype, steps=STEPS, names=None):
    ref_params = make_params(device, dtype, names)
    ours_params = clone_params(ref_params)
    ref = torch.optim.RMSprop(ref_params, foreach=False, **copy.deepcopy(config))
    ours = RMSprop(ours_params, **copy.deepcopy(config))
    grads = random_grads(ref_params, steps, _skip_bias_grad)
    run_steps(ref, ref_params, grads)
    run_steps(ours, ours_params, grads)
    return ours, ref, ours_params, ref_params


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_torch(config, dtype, device):
    full = dtype == torch.float32 and any(config is c for c in SINGLE_CONFIGS)
    ours, ref, ours_params, ref_params = _run_pair(config, device, dtype, names=None if full else SMALL_PARAMS)
    assert_same_state(ours, ref, ours_params, ref_params)


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_every_cpu_kernel_variant(isa):
    """Each compiled instruction-set variant gives torch's result."""
    order = ["default", "avx2", "avx512"]
    if order.index(isa) > order.index(fastopt.build_info()["cpu_capability_best"]):
        pytest.skip(f"this CPU does not support {isa}")
    previous = fastopt.build_info()["cpu_capability"]
    fastopt._C._set_cpu_capability(isa)
    try:
        # torch's kernels here are its AVX2/AVX-512 ones, which fuse
        # multiply-adds, and the baseline variant cannot. g / sqrt(square_avg)
        # magnifies that last-bit difference for tiny grads (and the centered
        # sqrt(square_avg - grad_avg^2) where the two nearly cancel) past
        # float32's tolerance, so the baseline is held to torch in float64;
        # the 16-bit check below runs every variant of the centered kernel.
        config = {"momentum": 0.9, "weight_decay": 0.1, "maximize": True}
        dtypes = (torch.float64,) if isa == "default" else (torch.float32, torch.float64)
        for dtype in dtypes:
            assert_same_state(*_run_pair(config, "cpu", dtype, steps=3))
        config = {"centered": True, "momentum": 0.9, "weight_decay": 0.1}
        check_low_precision(RMSprop, torch.optim.RMSprop, torch.bfloat16, "cpu", config, {"foreach": False})
    finally:
        fastopt._C._set_cpu_capability(previous)


# eps=1e-6 because torch's float16 for-loop adds eps in float16, where the
# default 1e-8 rounds to 0 and a tiny square_avg then divides by zero. Centered
# only in bfloat16: in float16 the square_avg of small grads underflows to 0,
# so square_avg - grad_avg^2 goes negative in torch and fastopt alike.
LOW_PRECISION_CASES = [
    (torch.bfloat16, {"eps": 1e-6}),
    (torch.bfloat16, {"eps": 1e-6, "centered": True, "momentum": 0.9, "weight_decay": 0.1}),
    (torch.float16, {"eps": 1e-6}),
    (torch.float16, {"eps": 1e-6, "momentum": 0.9, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("dtype,config", LOW_PRECISION_CASES, ids=repr)
def test_low_precision_error_within_twice_torch(dtype, config, device):
    # torch has no fused RMSprop, so "torch's error" is its for-loop run in
    # 16-bit, which rounds every intermediate to 16 bits; fastopt stores in
    # 16-bit but computes each step in float32.
    check_low_precision(RMSprop, torch.optim.RMSprop, dtype, device, config, {"foreach": False}, steps=STEPS)


def test_is_a_torch_optimizer():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(RMSprop(p), torch.optim.RMSprop)
    assert fastopt.RMSprop is RMSprop
    assert RMSprop(p).defaults == torch.optim.RMSprop(p).defaults


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1.0},
        {"eps": -1e-8},
        {"momentum": -0.1},
        {"weight_decay": -0.1},
        {"alpha": -0.5},
        {"lr": torch.tensor([0.1, 0.2])},
    ],
    ids=repr,
)
def test_validation_errors_match_torch(kwargs):
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert_same_error(lambda: torch.optim.RMSprop(params, **kwargs), lambda: RMSprop(params, **kwargs))


def test_differentiable_and_sparse_are_refused():
    with pytest.raises(RuntimeError, match="differentiable"):
        RMSprop([torch.nn.Parameter(torch.zeros(2))], differentiable=True)
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        RMSprop([p]).step()


def test_param_groups_add_param_group_and_lr_scheduler(device):
    """Groups with their own variant (plain, centered, momentum) and a scheduler."""
    ref_params = make_params(device, torch.float32)
    ours_params = clone_params(ref_params)
    runs = []
    for cls, params, kw in ((torch.optim.RMSprop, ref_params, {"foreach": False}), (RMSprop, ours_params, {})):
        opt = cls([{"params": params[:2]}, {"params": params[2:4], "centered": True}], lr=0.01, **kw)
        opt.add_param_group({"params": params[4:], "momentum": 0.9, "weight_decay": 0.1})
        runs.append((opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5), params))
    for step_grads in random_grads(ref_params, STEPS):
        for opt, sched, params in runs:
            set_grads(params, step_grads)
            opt.step()
            sched.step()
    (ref, _, _), (ours, _, _) = runs
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in ref.param_groups]
    assert_same_state(ours, ref, ours_params, ref_params)


def test_closure(device):
    x, y = torch.randn(32, 5, device=device), torch.randn(32, 1, device=device)
    results = []
    for cls, kw in ((torch.optim.RMSprop, {"foreach": False}), (RMSprop, {})):
        model = torch.nn.Linear(5, 1).to(device)
        torch.nn.init.constant_(model.weight, 0.1)
        torch.nn.init.zeros_(model.bias)
        opt = cls(model.parameters(), lr=0.01, momentum=0.5, **kw)

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
    """4 steps with one, save, load into the other, 6 more: same as all-torch."""
    config = {"centered": True, "momentum": 0.9, "weight_decay": 0.1}
    start = make_params(device, torch.float32)
    ref_params = clone_params(start)
    ref = torch.optim.RMSprop(ref_params, foreach=False, **config)
    grads = random_grads(ref_params, STEPS, _skip_bias_grad)
    run_steps(ref, ref_params, grads)

    first_cls, second_cls = (
        (torch.optim.RMSprop, RMSprop) if direction == "torch_to_fastopt" else (RMSprop, torch.optim.RMSprop)
    )
    params = clone_params(start)
    first = first_cls(params, **config)
    run_steps(first, params, grads[:4])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = second_cls(params, **config)
    second.load_state_dict(torch.load(buffer))
    assert second.state_dict()["param_groups"] == first.state_dict()["param_groups"]
    run_steps(second, params, grads[4:])
    assert_same_state(second, ref, params, ref_params)


@pytest.mark.parametrize("config", [{}, {"centered": True, "momentum": 0.9}], ids=repr)
def test_grad_scale_and_found_inf(config, device):
    """AMP's protocol: grads are unscaled in place, and found_inf skips the whole step."""
    params = make_params(device, torch.float32, ["non_aligned", "transposed", "bias"])
    ref_params = clone_params(params)
    grads = random_grads(params, 1)[0]
    scale = torch.tensor(1024.0, device=device)
    ours = RMSprop(params, weight_decay=0.1, **config)
    ref = torch.optim.RMSprop(ref_params, weight_decay=0.1, foreach=False, **config)
    set_grads(params, [g * scale for g in grads])
    set_grads(ref_params, grads)
    ours.grad_scale, ours.found_inf = scale, torch.tensor(0.0, device=device)
    ours.step()
    ref.step()
    assert_same_state(ours, ref, params, ref_params)
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, g)  # unscaled in place

    # a skipped step changes nothing, step counters and grads included
    before = copy.deepcopy(ours.state_dict())
    values = [p.detach().clone() for p in params]
    set_grads(params, [g * scale for g in grads])
    scaled = [p.grad.clone() for p in params]
    ours.found_inf = torch.tensor(1.0, device=device)
    ours.track_update_ratios()
    ours.step()
    for p, v, g in zip(params, values, scaled):
        assert torch.equal(p, v)
        assert torch.equal(p.grad, g)
    after = ours.state_dict()
    for i, s in before["state"].items():
        for k, v in s.items():
            assert torch.equal(after["state"][i][k], v), (i, k)
    # the skipped step reports no movement (0 / 0 for a zeroed norms row)
    assert not any(r.item() > 0 for r in ours.update_ratios().values())


@pytest.mark.parametrize("config", [{}, {"centered": True, "momentum": 0.9, "weight_decay": 0.1}], ids=repr)
def test_update_ratios(config, device):
    """||p_new - p_old|| / ||p_old||, accumulated inside the step, against a direct computation."""
    params = make_params(device, torch.float32, ["non_aligned", "transposed", "strided", "bias"])
    opt = RMSprop(params, lr=0.01, **config)
    opt.track_update_ratios()
    for step_grads in random_grads(params, 3):
        before = [p.detach().clone() for p in params]
        set_grads(params, step_grads)
        opt.step()
        ratios = opt.update_ratios()
        for p, b in zip(params, before):
            expected = (p.detach().double() - b.double()).norm() / b.double().norm()
            # the kernel sums squares in float32 SIMD lanes within each chunk
            torch.testing.assert_close(ratios[p].cpu(), expected.cpu(), rtol=1e-4, atol=0)


def test_complex_params_match_torch(device):
    ref_params = [torch.nn.Parameter(torch.randn(33, dtype=torch.complex64, device=device))]
    ours_params = clone_params(ref_params)
    grads = random_grads(ref_params, 5)
    config = {"centered": True, "momentum": 0.9, "weight_decay": 0.1}
    ref = torch.optim.RMSprop(ref_params, foreach=False, **config)
    ours = RMSprop(ours_params, **config)
    run_steps(ref, ref_params, grads)
    run_steps(ours, ours_params, grads)
    assert_same_state(ours, ref, ours_params, ref_params)
