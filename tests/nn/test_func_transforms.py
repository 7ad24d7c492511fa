"""fastopt.nn under torch.func transforms: the results of torch's modules.

fastopt's C++ autograd Functions are refused by functorch, so under a
transform every functional computes with its torch twin (see
dispatches_torch_function). These tests check that each module and
functional then gives exactly torch's values, and that outside transforms the
fused kernels still run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

import fastopt.nn
from fastopt.nn import functional as FF

from ..optim.reference import assert_same_error

# (fastopt module, torch module or composition): constructed per test, in float64.
MODULES = {
    "group_norm": lambda ns: ns.GroupNorm(2, 4),
    "layer_norm": lambda ns: ns.LayerNorm([5]),
    # Tracked running statistics in training fail under grad transforms in torch
    # too (an in-place count of a captured buffer): see the test below.
    "batch_norm_train": lambda ns: ns.BatchNorm2d(4, track_running_stats=False),
    "batch_norm_eval": lambda ns: ns.BatchNorm2d(4).eval(),
    "instance_norm": lambda ns: ns.InstanceNorm2d(4, affine=True, track_running_stats=True),
    "dropout": lambda ns: ns.Dropout(0.3),
    "dropout2d": lambda ns: ns.Dropout2d(0.3),
}


def _pair(name: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours = MODULES[name](fastopt.nn).to(device, torch.float64)
    ref = MODULES[name](torch.nn).to(device, torch.float64)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _same_seed(fn, *args):
    """fn(*args) from a fixed default-generator state (dropout draws from it)."""
    torch.manual_seed(1)
    return fn(*args)


@pytest.mark.parametrize("name", MODULES)
def test_grad_and_vjp_match_torch(device, name):
    ours, ref = _pair(name, device)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64, device=device)
    for m in (ours, ref):

        def loss(x, m=m):
            return m(x).sin().sum()

        m.result = _same_seed(grad(loss), x)
        out, pullback = _same_seed(vjp, lambda x, m=m: m(x).cos(), x)
        m.pulled = pullback(torch.ones_like(out))[0]
    torch.testing.assert_close(ours.result, ref.result, rtol=0, atol=0)
    torch.testing.assert_close(ours.pulled, ref.pulled, rtol=0, atol=0)
    # Running statistics updated under the transform, as torch updates them.
    for a, b in zip(ours.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tracked_batch_norm_training_fails_as_in_torch(device):
    x = torch.randn(3, 4, 5, 5, device=device)
    assert_same_error(
        lambda: grad(lambda x: torch.nn.BatchNorm2d(4).to(device)(x).sum())(x),
        lambda: grad(lambda x: fastopt.nn.BatchNorm2d(4).to(device)(x).sum())(x),
    )


def test_per_sample_gradients_match_torch(device):
    """The torch.func recipe for per-sample gradients: vmap(grad(...)) over functional_call."""
    grads = []
    for ns in (fastopt.nn, torch.nn):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), ns.GroupNorm(4, 8), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 6), ns.LayerNorm(6)
        ).to(device, torch.float64)
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(params, x, model=model):
            return functional_call(model, params, (x[None],)).square().sum()

        x = torch.randn(5, 3, 6, 6, dtype=torch.float64, device=device)
        grads.append(vmap(grad(loss), in_dims=(None, 0))(params, x))
    for key in grads[1]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=0, atol=0)


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_forward_mode_and_jacobians_of_functionals(device, activation):
    x = torch.randn(2, 6, 3, dtype=torch.float64, device=device)
    w = torch.randn(6, dtype=torch.float64, device=device)
    b = torch.randn(6, dtype=torch.float64, device=device)
    t = torch.randn_like(x)
    act = {None: lambda y: y, "relu": F.relu, "silu": F.silu}[activation]
    cases = [
        (lambda x: FF.group_norm(x, 3, w, b, 1e-5, activation), lambda x: act(F.group_norm(x, 3, w, b, 1e-5))),
        (lambda x: FF.layer_norm(x, [3]), lambda x: F.layer_norm(x, [3])),
        (lambda x: FF.instance_norm(x, weight=w, bias=b), lambda x: F.instance_norm(x, weight=w, bias=b)),
        (lambda x: FF.batch_norm(x, None, None, w, b, True), lambda x: F.batch_norm(x, None, None, w, b, True)),
    ]
    for ours, ref in cases:
        torch.testing.assert_close(jvp(ours, (x,), (t,)), jvp(ref, (x,), (t,)), rtol=0, atol=0)
        torch.testing.assert_close(jacrev(ours)(x), jacrev(ref)(x), rtol=0, atol=0)


def test_vmap_of_batch_norm_without_running_stats(device):
    x = torch.randn(2, 3, 4, 5, 5, device=device)
    torch.testing.assert_close(
        vmap(fastopt.nn.BatchNorm2d(4, track_running_stats=False).to(device))(x),
        vmap(torch.nn.BatchNorm2d(4, track_running_stats=False).to(device))(x),
    )


@pytest.mark.parametrize("randomness", ["different", "same"])
def test_dropout_under_vmap_draws_torch_masks(device, randomness):
    x = torch.randn(4, 300, device=device)
    fns = [
        (FF.dropout, F.dropout),
        (lambda x, p: FF.dropout_add(x, x, p), lambda x, p: F.dropout(x, p) + x),
    ]
    for ours, ref in fns:
        got = _same_seed(vmap(lambda x: ours(x, 0.4), randomness=randomness), x)
        want = _same_seed(vmap(lambda x: ref(x, 0.4), randomness=randomness), x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_outside_transforms_the_fused_kernels_run(device):
    """fastopt's own dropout stream (Philox) differs from torch's for one seed:
    the same call gives torch's mask only inside a transform."""
    x = torch.randn(1000, dtype=torch.float64, device=device, requires_grad=True)
    torch_mask = _same_seed(F.dropout, x, 0.5) != 0
    assert not torch.equal(_same_seed(FF.dropout, x, 0.5) != 0, torch_mask)
    assert torch.equal(_same_seed(grad(lambda x: FF.dropout(x, 0.5).sum()), x) != 0, torch_mask)


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_transforms_inside_torch_compile(device, transform):
    """A transform inside a compiled function traces the twins too."""
    x = torch.randn(3, 4, 5, device=device)
    results = []
    for ln, bn in ((FF.layer_norm, FF.batch_norm), (F.layer_norm, F.batch_norm)):
        if transform == "grad":
            fn = grad(lambda x, ln=ln: ln(x, [5]).sin().sum())
        else:
            fn = vmap(lambda x, bn=bn: bn(x, None, None, training=True))
        torch._dynamo.reset()
        results.append(torch.compile(fn)(x))
    torch.testing.assert_close(results[0], results[1])


def test_generator_under_transforms_is_refused(device):
    x = torch.randn(8, 4, device=device)
    g = torch.Generator(device=device)
    for call in (
        lambda x: FF.dropout(x, 0.5, generator=g),
        lambda x: FF.dropout1d(x, 0.5, generator=g),
        lambda x: FF.dropout_add(x, x, 0.5, generator=g),
    ):
        with pytest.raises(NotImplementedError, match="generator argument is not supported"):
            vmap(call, randomness="different")(x[:, None])
    # Where no mask is drawn, the generator is ignored, as in eager.
    for call in (
        lambda x: FF.dropout(x, 0.5, training=False, generator=g),
        lambda x: FF.dropout(x, 0.0, generator=g),
        lambda x: FF.dropout2d(x, 0.5, False, generator=g),
        lambda x: FF.dropout_add(x, x, 0.5, training=False, generator=g),
    ):
        torch.testing.assert_close(vmap(call)(x[:, None, :, None]), call(x[:, None, :, None]))


def test_bad_arguments_raise_torch_errors_under_transforms(device):
    x = torch.randn(2, 4, 3, device=device)
    with pytest.raises(ValueError, match="dropout probability"):
        grad(lambda x: FF.dropout(x, 1.5).sum())(x)
    with pytest.raises(ValueError, match="activation must be"):
        grad(lambda x: FF.group_norm(x, 2, activation="gelu").sum())(x)
    with pytest.raises(ValueError, match="mask must be"):
        grad(lambda x: FF.dropout(x, 0.5, mask="bytes").sum())(x)


def test_model_ensemble_with_batch_norm_matches_torch(device):
    """torch.func's ensembling recipe: stacked module states, vmap over functional_call."""
    outs = []
    for ns in (fastopt.nn, torch.nn):
        torch.manual_seed(0)
        models = [
            torch.nn.Sequential(torch.nn.Linear(6, 4), ns.BatchNorm1d(4), ns.Dropout(0.0)).to(device)
            for _ in range(3)
        ]
        params, buffers = torch.func.stack_module_state(models)
        base = models[0]
        x = torch.randn(3, 8, 6, device=device)
        outs.append(vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))(params, buffers, x))
        outs.append(buffers["1.running_mean"])
    for a, b in zip(outs[:2], outs[2:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["Dropout", "Dropout1d"])
def test_in_place_dropout_under_vmap(device, name):
    ours = getattr(fastopt.nn, name)(0.5, inplace=True)
    ref = getattr(torch.nn, name)(0.5, inplace=True)
    x = torch.randn(4, 3, 50, device=device)
    got = _same_seed(vmap(lambda t: ours(t.clone()), randomness="different"), x)
    want = _same_seed(vmap(lambda t: ref(t.clone()), randomness="different"), x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["group_norm", "layer_norm", "batch_norm_eval", "instance_norm", "dropout"])
def test_forward_mode_ad_matches_torch(device, name):
    """Dual tensors (torch.autograd.forward_ad) take the torch twins too."""
    import torch.autograd.forward_ad as fwAD

    ours, ref = _pair(name, device)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64, device=device)
    t = torch.randn_like(x)
    results = []
    for m in (ours, ref):
        with fwAD.dual_level():
            y = _same_seed(m, fwAD.make_dual(x, t))
            results.append(fwAD.unpack_dual(y))
    torch.testing.assert_close(results[0].primal, results[1].primal, rtol=0, atol=0)
    torch.testing.assert_close(results[0].tangent, results[1].tangent, rtol=0, atol=0)


def test_functionalize_of_training_batch_norm_and_in_place_dropout(device):
    """functionalize is a transform too: the ops that write in place (which it
    refuses as custom ops) are torch's there."""
    x = torch.randn(4, 3, 5, device=device)
    running_means, dropped = [], []
    for ns in (fastopt.nn, torch.nn):
        bn = ns.BatchNorm1d(3).to(device)
        torch.func.functionalize(bn)(x)
        running_means.append(bn.running_mean)
        drop = ns.Dropout(0.5, inplace=True)
        dropped.append(_same_seed(torch.func.functionalize(lambda t: drop(t.clone())), x))
    torch.testing.assert_close(running_means[0], running_means[1], rtol=0, atol=0)
    torch.testing.assert_close(dropped[0], dropped[1], rtol=0, atol=0)
