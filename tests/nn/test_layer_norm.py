"""fastopt.nn.LayerNorm against torch.nn.LayerNorm."""

from __future__ import annotations

import pytest
import torch

import fastopt.nn

from ..optim.reference import assert_same_error, assert_same_functional_error
from .tensors import unaligned

# Every test under each compiled CPU kernel variant (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_cpu_isa")


@pytest.mark.parametrize("normalized_shape", [(24,), (3, 10), (2, 3, 5)])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_matches_torch(device, normalized_shape, affine, bias):
    ref = torch.nn.LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias, dtype=torch.float64)
    ref = ref.to(device)
    if affine:
        with torch.no_grad():
            for p in ref.parameters():
                p.normal_()
    ours = fastopt.nn.LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias, dtype=torch.float64)
    ours = ours.to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, *normalized_shape, dtype=torch.float64, device=device) + 5
    grad = torch.randn_like(x)
    outs = []
    for m in (ours, ref):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(grad)
        outs.append([y, xi.grad] + [p.grad for p in m.parameters()])
        m.zero_grad()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


# Row lengths for the kernels' row teams (a warp; a block of 64 and 512
# threads) and for a row too long for any team, which takes the general path;
# each as a multiple of every dtype's 16-byte vector (vector access) and as an
# odd length (element access).
ROW_LENGTHS = [24, 1000, 5000, 9000, 23, 1001, 5001, 9001]


@pytest.mark.parametrize("C", ROW_LENGTHS)
def test_row_lengths_match_float64(device, C):
    x = torch.randn(6, C, device=device) * 3 + 2
    w, b = torch.randn(C, device=device), torch.randn(C, device=device)
    grad = torch.randn_like(x)
    results = []
    for dtype in (torch.float32, torch.float64):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (x, w, b)]
        y = fastopt.nn.functional.layer_norm(leaves[0], (C,), leaves[1], leaves[2])
        y.backward(grad.to(dtype))
        results.append([y.detach()] + [t.grad for t in leaves])
    ours, exact = results
    for got, ref in zip(ours, exact):
        torch.testing.assert_close(got.double(), ref.double(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
# 8192 is the longest row a CUDA team of 512 threads holds in registers; 8193
# takes the general path.
@pytest.mark.parametrize("C", [1000, 8192, 8193, 9000])
def test_low_precision_within_twice_torch_error(device, dtype, C):
    """Against a float64 reference, fastopt's error is at most twice torch's own."""
    x = (torch.randn(5, C, device=device) + 1).to(dtype)
    w, b = torch.randn(C, device=device).to(dtype), torch.randn(C, device=device).to(dtype)
    grad = torch.randn(5, C, device=device).to(dtype)

    def run(fn, *ts):
        leaves = [t.detach().clone().requires_grad_() for t in ts]
        y = fn(leaves[0], (C,), leaves[1], leaves[2])
        y.backward(grad.to(y.dtype))
        return [y.detach()] + [t.grad for t in leaves]

    ours = run(fastopt.nn.functional.layer_norm, x, w, b)
    theirs = run(torch.nn.functional.layer_norm, x, w, b)
    exact = run(torch.nn.functional.layer_norm, x.double(), w.double(), b.double())
    for got, ref, true in zip(ours, theirs, exact):
        err = (got.double() - true).abs().max().item()
        torch_err = (ref.double() - true).abs().max().item()
        assert err <= 2 * torch_err + 1e-6 * true.abs().max().item(), (err, torch_err)


@pytest.mark.parametrize("C", [24, 600])
@pytest.mark.parametrize("misaligned", [False, True])
def test_many_rows_match_float64(device, C, misaligned):
    """More rows than the row kernels' grid covers in one pass: a grid-stride
    loop whose last pass leaves some teams without a row (which must still
    join their block's reductions), from an aligned or a misaligned start."""
    N = 4103
    x = torch.randn(N, C, device=device) * 3 + 2
    w, b, grad = torch.randn(C, device=device), torch.randn(C, device=device), torch.randn_like(x)
    leaves = [unaligned(x) if misaligned else x.clone(), w.clone(), b.clone()]
    leaves = [t.requires_grad_() for t in leaves]
    y = fastopt.nn.functional.layer_norm(leaves[0], (C,), leaves[1], leaves[2])
    y.backward(unaligned(grad) if misaligned else grad)
    exact = [t.double().requires_grad_() for t in (x, w, b)]
    y_ref = torch.nn.functional.layer_norm(exact[0], (C,), exact[1], exact[2])
    y_ref.backward(grad.double())
    for got, ref in zip([y, *(t.grad for t in leaves)], [y_ref, *(t.grad for t in exact)]):
        torch.testing.assert_close(got.double(), ref.detach(), atol=1e-4, rtol=1e-4)


def test_gradcheck(device):
    m = fastopt.nn.LayerNorm((3, 4), dtype=torch.float64).to(device)
    x = torch.randn(5, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, w, b: fastopt.nn.functional.layer_norm(x, (3, 4), w, b)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [x, m.weight, m.bias])


def test_bad_shape_raises_like_torch():
    with pytest.raises(RuntimeError, match="normalized_shape"):
        fastopt.nn.LayerNorm(8)(torch.randn(2, 7))


LAYER_NORM_ERRORS = {
    "empty-normalized-shape": lambda F, x: F.layer_norm(x, ()),
    "input-shape": lambda F, x: F.layer_norm(x, (4,)),
    "input-too-short": lambda F, x: F.layer_norm(x, (1, 2, 3, 5)),
    "weight-shape": lambda F, x: F.layer_norm(x, (5,), torch.ones(4)),
    # the right number of elements in the wrong shape: torch rejects it too
    "weight-flat": lambda F, x: F.layer_norm(x, (3, 5), torch.ones(15)),
    "weight-extra-dim": lambda F, x: F.layer_norm(x, (5,), torch.ones(1, 5)),
    "bias-shape": lambda F, x: F.layer_norm(x, (5,), None, torch.ones(1, 5)),
}


@pytest.mark.parametrize("case", LAYER_NORM_ERRORS)
def test_errors_match_torch(case):
    assert_same_functional_error(LAYER_NORM_ERRORS[case], torch.randn(2, 3, 5))


def test_module_errors_match_torch():
    x = torch.randn(3, 4)
    for shape in [(), 5]:
        assert_same_error(lambda: torch.nn.LayerNorm(shape)(x), lambda: fastopt.nn.LayerNorm(shape)(x))


@pytest.mark.parametrize("normalized_shape,shape", [(0, (3, 0)), ((2, 0), (3, 2, 0)), (4, (0, 4))])
def test_empty_matches_torch(device, normalized_shape, shape):
    """Zero elements per row (LayerNorm(0)) or no rows: torch's empty output and zero gradients."""
    results = []
    for cls in (fastopt.nn.LayerNorm, torch.nn.LayerNorm):
        m = cls(normalized_shape).to(device)
        x = torch.randn(shape, device=device, requires_grad=True)
        y = m(x)
        y.sum().backward()
        results.append([y, x.grad, m.weight.grad, m.bias.grad])
    for ours, ref in zip(*results):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref)
