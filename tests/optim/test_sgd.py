"""fastopt.optim.SGD against torch.optim.SGD(foreach=False)."""

from __future__ import annotations

import pytest
import torch

import fastopt
from fastopt.optim import SGD

from .reference import (
    assert_same_state,
    assert_same_validation_error,
    check_16bit_storage_float32_math,
    check_closure,
    check_complex_params,
    check_grad_scale_and_found_inf,
    check_low_precision,
    check_lr_schedulers,
    check_skipped_step,
    check_state_dict_round_trip,
    check_update_ratios,
    clone_params,
    compare_with_torch,
    make_params,
    random_grads,
    run_steps,
)

# torch's own configuration grid (optim_inputs_func_sgd), plus combinations.
CONFIGS = [
    {},
    {"lr": 0.05},
    {"lr": torch.tensor(0.05)},
    {"weight_decay": 0.1},
    {"momentum": 0.9},
    {"momentum": 0.9, "maximize": True, "weight_decay": 0.1},
    {"momentum": 0.9, "dampening": 0.5},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    {"momentum": 0.9, "nesterov": True, "maximize": True, "lr": torch.tensor(0.02)},
    {"maximize": True, "weight_decay": 0.1},
]


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_torch(config, dtype, device):
    compare_with_torch(SGD, torch.optim.SGD, config, device, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("config", [{"momentum": 0.9, "weight_decay": 0.1}, {"momentum": 0.9, "nesterov": True}], ids=repr)
def test_low_precision_error_within_twice_torch(dtype, config, device):
    check_low_precision(SGD, torch.optim.SGD, dtype, device, {"lr": 0.05, **config})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("config", [{"momentum": 0.9, "weight_decay": 0.1}, {"momentum": 0.9, "nesterov": True}, {"momentum": 0.9, "dampening": 0.5, "maximize": True}], ids=repr)
def test_low_precision_is_float32_math(dtype, config, device):
    check_16bit_storage_float32_math(SGD, torch.optim.SGD, dtype, device, {"lr": 0.05, **config})


def test_is_a_torch_optimizer():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(SGD(p), torch.optim.SGD)
    assert fastopt.SGD is SGD
    assert SGD(p).defaults == torch.optim.SGD(p).defaults


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1.0},
        {"momentum": -0.5},
        {"weight_decay": -0.1},
        {"nesterov": True},
        {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
        {"lr": torch.tensor([0.1, 0.2])},
        {"fused": True, "foreach": True},
    ],
    ids=repr,
)
def test_validation_errors_match_torch(kwargs):
    assert_same_validation_error(SGD, torch.optim.SGD, kwargs)


def test_differentiable_is_refused():
    with pytest.raises(RuntimeError, match="differentiable"):
        SGD([torch.nn.Parameter(torch.zeros(2))], differentiable=True)


def test_no_state_without_momentum(device):
    """Like torch, SGD without momentum keeps no state at all, and never a step counter."""
    params = make_params(device, torch.float32, ["bias"])
    opt = SGD(params)
    run_steps(opt, params, random_grads(params, 2))
    assert opt.state_dict()["state"] == {}
    opt = SGD(params, momentum=0.9)
    run_steps(opt, params, random_grads(params, 2))
    assert set(opt.state[params[0]]) == {"momentum_buffer"}


@pytest.mark.parametrize("direction", ["torch_to_fastopt", "fastopt_to_torch"])
def test_state_dict_round_trip(direction, device):
    check_state_dict_round_trip(SGD, torch.optim.SGD, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1}, direction, device)


@pytest.mark.parametrize("config", [{"momentum": 0.9, "weight_decay": 0.1}, {}], ids=repr)
def test_grad_scale_and_found_inf(config, device):
    check_grad_scale_and_found_inf(SGD, torch.optim.SGD, config, device)


@pytest.mark.parametrize("dampening", [0.0, 0.3])
def test_skipped_first_step_leaves_no_garbage(dampening, device):
    """AMP skipping the very first step must not leave the momentum buffer uninitialised.

    torch's fused SGD allocates it with empty_like and marks it initialised,
    so the next step reads garbage. fastopt's buffer is zero after the skip;
    with dampening=0 the following steps then match torch, where the skipped
    step never reached the optimizer.
    """
    params = make_params(device, torch.float32, ["non_aligned", "bias"])
    ref_params = clone_params(params)
    config = {"momentum": 0.9, "dampening": dampening}
    opt = SGD(params, **config)
    grads = random_grads(params, 3)
    check_skipped_step(opt, params, [torch.full_like(g, float("inf")) for g in grads[0]], device)
    for p in params:
        assert torch.equal(opt.state[p]["momentum_buffer"], torch.zeros_like(p))
    run_steps(opt, params, grads)
    for p in params:
        assert torch.isfinite(opt.state[p]["momentum_buffer"]).all()
    if dampening == 0:
        ref = torch.optim.SGD(ref_params, foreach=False, **config)
        run_steps(ref, ref_params, grads)
        assert_same_state(opt, ref, params, ref_params)


def test_update_ratios(device):
    check_update_ratios(SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}, device)


def test_param_groups_and_lr_schedulers(device):
    check_lr_schedulers(SGD, torch.optim.SGD, {"momentum": 0.9}, device)


def test_closure(device):
    check_closure(SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.5}, device)


def test_complex_params_match_torch(device):
    check_complex_params(SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}, device)
