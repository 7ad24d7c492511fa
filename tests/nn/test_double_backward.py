"""Second derivatives through the normalization modules (NOTE: [double backward]
in csrc/autograd/common.h): a gradient taken with create_graph=True must be
differentiable again, exactly as torch's is, while a plain backward keeps the
fused ops."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastopt.nn

# (name, module factory over a torch.nn-like namespace, input shape, channels_last)
CASES: list[tuple[str, Callable, tuple[int, ...], bool]] = [
    ("layer_norm", lambda nn: nn.LayerNorm(5), (3, 4, 5), False),
    ("layer_norm_2d_no_bias", lambda nn: nn.LayerNorm((2, 5), bias=False), (3, 2, 5), False),
    ("group_norm", lambda nn: nn.GroupNorm(2, 4), (3, 4, 5), False),
    ("group_norm_nhwc", lambda nn: nn.GroupNorm(2, 4), (2, 4, 3, 3), True),
    ("group_norm_no_affine", lambda nn: nn.GroupNorm(2, 4, affine=False), (3, 4, 5), False),
    ("instance_norm", lambda nn: nn.InstanceNorm1d(4, affine=True), (3, 4, 5), False),
    ("batch_norm_train", lambda nn: nn.BatchNorm1d(4), (3, 4, 5), False),
    ("batch_norm_train_nhwc", lambda nn: nn.BatchNorm2d(4), (2, 4, 3, 3), True),
    ("batch_norm_eval", lambda nn: nn.BatchNorm1d(4).eval(), (3, 4, 5), False),
    # No parameter needs a gradient, so forward saves no x: the double backward
    # once read its dtype anyway (an internal assert).
    ("batch_norm_eval_no_affine", lambda nn: nn.BatchNorm1d(4, affine=False).eval(), (3, 4, 5), False),
    ("batch_norm_eval_frozen", lambda nn: nn.BatchNorm2d(4).eval().requires_grad_(False), (2, 4, 3, 3), True),
]


def _module(factory: Callable, namespace, device: str) -> torch.nn.Module:
    torch.manual_seed(1)
    m = factory(namespace).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
        for name, b in m.named_buffers():
            if name == "running_var":
                b.uniform_(0.5, 2.0)
            elif name == "running_mean":
                b.normal_()
    return m


def _input(shape: tuple[int, ...], channels_last: bool, device: str) -> torch.Tensor:
    x = torch.randn(shape, dtype=torch.float64, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _gradient_penalty(m: torch.nn.Module, x: torch.Tensor, through: str) -> list[torch.Tensor]:
    """d/dx and d/dparams of ||first||^2, first the gradient of a loss with
    respect to x (the WGAN-GP pattern) or to the parameters."""
    x = x.clone().requires_grad_()
    params = [p for p in m.parameters() if p.requires_grad]
    y = m(x)
    first = torch.autograd.grad((y * y.sin()).sum(), [x] if through == "input" else params, create_graph=True)
    penalty = sum(g.square().sum() for g in first)
    return list(torch.autograd.grad(penalty, [x, *params]))


# "params": evaluation-mode BatchNorm once returned zeros there, its weight
# and bias gradients coming from the fused reduction, which has no derivative.
@pytest.mark.parametrize("through", ["input", "params"])
@pytest.mark.parametrize("name,factory,shape,channels_last", CASES, ids=[c[0] for c in CASES])
def test_gradient_penalty_matches_torch(device, name, factory, shape, channels_last, through):
    if through == "params" and name in ("group_norm_no_affine", "batch_norm_eval_no_affine", "batch_norm_eval_frozen"):
        pytest.skip("no parameters that need a gradient")
    x = _input(shape, channels_last, device)
    ours = _gradient_penalty(_module(factory, fastopt.nn, device), x, through)
    ref = _gradient_penalty(_module(factory, torch.nn, device), x, through)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.abs().max() > 0 or b.abs().max() == 0  # a real second derivative, not a dropped path
        torch.testing.assert_close(a, b)


def test_instance_norm_bias_without_weight_differentiates_twice(device):
    # Only the functional form passes a bias alone; torch's group norm, which
    # the double backward recomputes with, cannot take one. torch's reference
    # gets a constant weight of ones (the same function): torch 2.11's CUDA
    # double backward of a bias alone fails ("tensor does not have a device").
    x = torch.randn(3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    ones = torch.ones(4, dtype=torch.float64, device=device)
    results = []
    for F, weight in ((fastopt.nn.functional, None), (torch.nn.functional, ones)):
        y = F.instance_norm(x, weight=weight, bias=bias)
        first = torch.autograd.grad(y.sin().sum(), [x, bias], create_graph=True)
        results.append([*first, *torch.autograd.grad(first[0].square().sum(), [x, bias])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_gradgradcheck_group_norm(device, activation):
    m = fastopt.nn.GroupNorm(2, 4, activation=activation).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    # Seeded (tests/conftest.py): no value sits within gradgradcheck's step of ReLU's kink.
    x = torch.randn(2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: m(t), (x,))


@pytest.mark.parametrize("name,factory,shape,channels_last", CASES, ids=[c[0] for c in CASES])
def test_gradgradcheck(device, name, factory, shape, channels_last):
    m = _module(factory, fastopt.nn, device)
    x = _input(shape, channels_last, device).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: m(t), (x,))


class _RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "module,backward_op",
    [
        (lambda: fastopt.nn.GroupNorm(2, 4), "fastopt.group_norm_bwd"),
        (lambda: fastopt.nn.BatchNorm1d(4), "fastopt.batch_norm_bwd"),
    ],
)
def test_plain_backward_keeps_the_fused_op(device, module, backward_op):
    m = module().to(device)
    x = torch.randn(3, 4, 5, device=device, requires_grad=True)
    y = m(x)
    with _RecordOps() as plain:
        y.backward(torch.ones_like(y))
    assert any(n.startswith(backward_op) for n in plain.names)
    assert not any("native_group_norm" in n or "native_batch_norm" in n for n in plain.names)
    y = m(x)
    with _RecordOps() as graph:
        torch.autograd.grad(y.sum(), x, create_graph=True)
    assert not any(n.startswith(backward_op) for n in graph.names)
