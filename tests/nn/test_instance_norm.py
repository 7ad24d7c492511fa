"""fastopt.nn.InstanceNorm1d/2d/3d against torch's modules, running stats included."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import fastopt.nn
from fastopt.nn import functional as FF

from ..optim.reference import assert_same_error, assert_same_functional_error

# Every test under each compiled CPU kernel variant (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_cpu_isa")

CASES = [
    (fastopt.nn.InstanceNorm1d, torch.nn.InstanceNorm1d, (3, 5, 11)),
    (fastopt.nn.InstanceNorm2d, torch.nn.InstanceNorm2d, (3, 5, 4, 7)),
    (fastopt.nn.InstanceNorm3d, torch.nn.InstanceNorm3d, (2, 5, 3, 4, 5)),
]


@pytest.mark.parametrize("ours_cls,ref_cls,shape", CASES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("track", [False, True])
def test_matches_torch(device, ours_cls, ref_cls, shape, affine, track):
    kw = dict(affine=affine, track_running_stats=track, dtype=torch.float64)
    ref = ref_cls(5, **kw).to(device)
    ours = ours_cls(5, **kw).to(device)
    if affine:
        with torch.no_grad():
            ref.weight.normal_()
            ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    for step in range(2):
        x = torch.randn(shape, dtype=torch.float64, device=device) * 2 + 1
        outs = []
        for m in (ours, ref):
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.backward(torch.ones_like(y) + xi.detach())
            outs.append([y, xi.grad, *[p.grad for p in m.parameters()]])
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b)
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b)
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_unbatched_input(device):
    ours, ref = fastopt.nn.InstanceNorm1d(4).to(device), torch.nn.InstanceNorm1d(4).to(device)
    x = torch.randn(4, 9, device=device)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck(device, channels_last):
    m = fastopt.nn.InstanceNorm2d(3, affine=True, dtype=torch.float64).to(device)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(m, [x.requires_grad_()])


def test_functional_signature_matches_torch():
    ours, ref = inspect.signature(FF.instance_norm), inspect.signature(F.instance_norm)
    assert list(ours.parameters) == list(ref.parameters)
    for name, p in ref.parameters.items():
        assert ours.parameters[name].default == p.default, name


def _functional_results(fn, x, stats, weight, *args):
    """fn's output, the gradients of x and weight, and the running statistics after the call."""
    x = x.clone().requires_grad_()
    running = [t.clone() for t in stats] if stats else [None, None]
    w = weight.clone().requires_grad_() if weight is not None else None
    y = fn(x, *running, w, None if w is None else w * 0.5, *args)
    y.backward(torch.cos(y.detach()))
    return [y, x.grad] + ([w.grad] if w is not None else []) + [t for t in running if t is not None]


@pytest.mark.parametrize("with_stats", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("args", [(), (True, 0.3, 1e-3), (True, 0.0), (False,), (False, 0.1, 1e-2)])
def test_functional_matches_torch(device, with_stats, affine, args):
    """torch's F.instance_norm, positional arguments and all: a Tensor, with the running
    statistics updated in place (use_input_stats) or used to normalize (not use_input_stats)."""
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, device=device) * 2 + 1
    stats = [
        torch.randn(4, dtype=torch.float64, device=device),
        torch.rand(4, dtype=torch.float64, device=device) + 0.5,
    ]
    weight = torch.randn(4, dtype=torch.float64, device=device) if affine else None
    call = lambda fn: _functional_results(fn, x, stats if with_stats else None, weight, *args)  # noqa: E731
    if args and not args[0] and not with_stats:
        assert_same_error(lambda: call(F.instance_norm), lambda: call(FF.instance_norm))
        return
    ours, ref = call(FF.instance_norm), call(F.instance_norm)
    assert isinstance(ours[0], torch.Tensor) and len(ours) == len(ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


INSTANCE_NORM_ERRORS = {
    "one-running-stat": lambda F, x, t: F.instance_norm(x, t(4), None),
    "running-mean-size": lambda F, x, t: F.instance_norm(x, t(3), t(4)),
    "running-var-size": lambda F, x, t: F.instance_norm(x, t(4), t(5)),
    "weight-size": lambda F, x, t: F.instance_norm(x, None, None, t(3)),
    "bias-size": lambda F, x, t: F.instance_norm(x, None, None, t(4), t(2)),
    "no-stats-without-input-stats": lambda F, x, t: F.instance_norm(x, None, None, None, None, False),
    "one-spatial-element": lambda F, x, t: F.instance_norm(x[..., :1]),
}


@pytest.mark.parametrize("case", INSTANCE_NORM_ERRORS)
def test_functional_errors_match_torch(device, case):
    x = torch.randn(2, 4, 5, device=device)
    assert_same_functional_error(INSTANCE_NORM_ERRORS[case], x, lambda n: torch.ones(n, device=device))


@pytest.mark.parametrize("shape", [(0, 4, 5, 6), (2, 4, 0, 6), (0, 4, 0, 6)], ids=["no-samples", "no-pixels", "none"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_empty_input_matches_torch(device, shape, momentum):
    """As torch: an empty output; an empty input leaves the running statistics alone, except
    that an empty batch makes them NaN (torch averages N copies of them, here none)."""
    ours = fastopt.nn.InstanceNorm2d(4, track_running_stats=True, momentum=momentum).to(device)
    ref = torch.nn.InstanceNorm2d(4, track_running_stats=True, momentum=momentum).to(device)
    with torch.no_grad():
        ref.running_mean.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, device=device)
    y, y_ref = ours(x), ref(x)
    assert y.shape == y_ref.shape == shape
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, equal_nan=True)
    if shape[0] == 0:
        assert math.isnan(ours.running_mean[0].item())


def test_eps_zero_on_constant_instances_matches_torch(device):
    """eps = 0 and instances of one value: ATen's CPU kernel makes the inverse std
    0 there, so the output is the bias (not NaN); its CUDA kernel divides by 0 and
    gives NaN. On each device fastopt gives torch's output, gradients and running
    statistics."""
    results = []
    for cls in (fastopt.nn.InstanceNorm2d, torch.nn.InstanceNorm2d):
        torch.manual_seed(0)
        module = cls(3, eps=0.0, affine=True, track_running_stats=True).to(device)
        with torch.no_grad():
            module.bias.normal_()
        x = torch.randn(2, 3, 4, 4, device=device)
        x[0, 1] = 2.5  # one constant instance among ordinary ones
        x.requires_grad_()
        y = module(x)
        y.backward(torch.randn_like(y))
        results.append([y, x.grad, module.weight.grad, module.bias.grad, module.running_mean, module.running_var])
    if device == "cpu":
        assert torch.isfinite(results[0][0]).all()
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_momentum_none_keeps_running_stats(device):
    """torch's momentum=None is a momentum of 0 here: the running statistics stay as they are."""
    ours = fastopt.nn.InstanceNorm1d(3, track_running_stats=True, momentum=None).to(device)
    ref = torch.nn.InstanceNorm1d(3, track_running_stats=True, momentum=None).to(device)
    x = torch.randn(4, 3, 7, device=device)
    torch.testing.assert_close(ours(x), ref(x))
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("momentum", [0.5, 0.0, None])
def test_half_running_stats_blend_before_rounding(device, momentum):
    """float16 estimates of instances whose variance (about 1e5) is past
    float16's largest value: the blend is rounded into the buffer once, so at
    momentum 0 (and None) the estimates stay as they were, as torch's do, and
    at 0.5 they are the float64 blend rounded, finite where it fits."""
    torch.manual_seed(0)
    x = (torch.randn(8, 4, 6, 6, device=device) * 316).half()
    ours = fastopt.nn.InstanceNorm2d(4, momentum=momentum, track_running_stats=True).to(device).half()
    ref = torch.nn.InstanceNorm2d(4, momentum=momentum, track_running_stats=True).to(device).double()
    ours(x)
    ref(x.double())
    assert torch.isfinite(ours.running_var).all()
    for name in ("running_mean", "running_var"):
        # One float16 step: the variance comes back from the float32 rstd
        # (see _update_running_stats), and may round to the neighbouring value.
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name).half(), rtol=1e-3, atol=0)


def test_vmap_over_tracked_training_leaves_running_stats(device):
    """Under vmap the running statistics, updated in place, cannot take batched
    statistics: torch's error, raised before either buffer is touched."""
    m = fastopt.nn.InstanceNorm1d(4, track_running_stats=True).to(device)
    m.running_mean.fill_(1.0)
    with pytest.raises(RuntimeError, match="were not batched"):
        torch.func.vmap(m)(torch.randn(5, 2, 4, 3, device=device))
    assert torch.equal(m.running_mean, torch.ones(4, device=device))
    assert torch.equal(m.running_var, torch.ones(4, device=device))


@pytest.mark.parametrize("stat", ["running_mean", "running_var"])
def test_running_stats_requiring_grad_are_refused(device, stat):
    """torch runs BatchNorm on the repeated estimates, whose autograd refuses
    them requiring grad: the same error here, and none without autograd."""
    x = torch.randn(2, 3, 4, 4, device=device)

    def call(ns):
        m = ns.InstanceNorm2d(3, track_running_stats=True).to(device)
        getattr(m, stat).requires_grad_()
        return m(x)

    assert_same_error(lambda: call(torch.nn), lambda: call(fastopt.nn))
    with torch.no_grad():
        torch.testing.assert_close(call(fastopt.nn), call(torch.nn))


def test_weight_changed_in_place_before_a_second_backward(device):
    """An optimizer step between two backwards through one retained graph: torch
    saved a copy of the weight, and so does fastopt, so both use the old one."""
    grads = []
    for ns in (fastopt.nn, torch.nn):
        torch.manual_seed(0)
        m = ns.InstanceNorm2d(4, affine=True).to(device)
        x = torch.randn(2, 4, 5, 5, device=device, requires_grad=True)
        y = m(x)
        y.square().sum().backward(retain_graph=True)
        with torch.no_grad():
            m.weight.mul_(2)
            m.bias.add_(1)
        x.grad = None
        (y * 3).sum().backward()
        grads.append((x.grad, m.weight.grad, m.bias.grad))
    torch.testing.assert_close(grads[0], grads[1])
