"""fastopt.nn.GroupNorm and functional.group_norm against torch.nn.functional.group_norm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fastopt.nn
from fastopt.nn import functional as FF

from ..optim.reference import assert_same_error, assert_same_functional_error
from .tensors import streamed_numel, unaligned

# Every test under each compiled CPU kernel variant (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_cpu_isa")

ACTIVATIONS = {None: lambda y: y, "relu": F.relu, "silu": F.silu}


def _run(fn, x, w, b, grad, copy=lambda t: t.detach().clone()):
    """Output and (dx, dw, db) of fn(x, w, b) under the upstream gradient `grad`.

    The leaves are `copy` of x, w and b: by default a clone, which is a fresh,
    aligned allocation (misaligned leaves come from tensors.unaligned).
    """
    leaves = [copy(t).requires_grad_() if t is not None else None for t in (x, w, b)]
    y = fn(*leaves)
    y.backward(grad)
    return y.detach(), [t.grad if t is not None else None for t in leaves]


def _inputs(shape, groups, dtype, channels_last, device, affine=True):
    x = (torch.randn(shape, dtype=torch.float64, device=device) * 2 + 3).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    C = shape[1]
    w = torch.randn(C, dtype=dtype, device=device) if affine else None
    b = torch.randn(C, dtype=dtype, device=device) if affine else None
    return x, w, b, torch.randn(shape, dtype=dtype, device=device)


# (N, C, H, W): C not a multiple of 8, HW = 1 and odd spatial sizes; each with
# group counts 1, 2, C/2 and C.
SHAPES = [(2, 6, 5, 7), (3, 10, 1, 1), (2, 20, 3, 9)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("groups_of", ["1", "2", "C/2", "C"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu", "relu"])
def test_matches_torch_fp64(device, shape, groups_of, channels_last, activation):
    C = shape[1]
    groups = {"1": 1, "2": 2, "C/2": C // 2, "C": C}[groups_of]
    x, w, b, grad = _inputs(shape, groups, torch.float64, channels_last, device)
    y, grads = _run(lambda x, w, b: FF.group_norm(x, groups, w, b, 1e-5, activation), x, w, b, grad)
    act = ACTIVATIONS[activation]
    y_ref, grads_ref = _run(lambda x, w, b: act(F.group_norm(x, groups, w, b, 1e-5)), x, w, b, grad)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    # The output keeps the input's memory format.
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and grads[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_plane_tail_length(device, dtype):
    """Planes of 1 to 33 elements: every remainder after the SIMD blocks (up to 32 bf16 lanes).

    Each channels-first plane ends in the scalar tail of the SIMD loops
    (norm_loops.h); a tail that is skipped, doubled or read past the plane
    shows at one of these lengths, under each CPU kernel variant.
    """
    # float32: its own default tolerance; bf16: an output rounds once, its gradients sum S of them
    tol = {torch.float32: {"rtol": 1.3e-6, "atol": 1e-5}, torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}.get(dtype, {})
    for S in range(1, 34):
        x, w, b, grad = _inputs((2, 4, 1, S), 2, dtype, False, device)
        ours = _run(lambda x, w, b: FF.group_norm(x, 2, w, b, 1e-5, "silu"), x, w, b, grad)
        exact = _run(lambda x, w, b: F.silu(F.group_norm(x, 2, w, b, 1e-5)), *(t.double() for t in (x, w, b)), grad.double())
        for got, ref in zip([ours[0], *ours[1]], [exact[0], *exact[1]]):
            torch.testing.assert_close(got.double(), ref, **tol, msg=lambda m: f"S={S}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_low_precision_within_twice_torch_error(device, dtype, channels_last):
    """Against a float64 reference, fastopt's error is at most twice torch's own."""
    x, w, b, grad = _inputs((4, 24, 7, 9), 6, dtype, channels_last, device)
    fn = lambda x, w, b: F.silu(F.group_norm(x, 6, w, b))  # noqa: E731
    ours = _run(lambda x, w, b: FF.group_norm(x, 6, w, b, activation="silu"), x, w, b, grad)
    theirs = _run(fn, x, w, b, grad)
    exact = _run(fn, *(t.double() for t in (x, w, b)), grad.double())
    for got, ref, true in zip([ours[0], *ours[1]], [theirs[0], *theirs[1]], [exact[0], *exact[1]]):
        err = (got.double() - true).abs().max().item()
        torch_err = (ref.double() - true).abs().max().item()
        assert err <= 2 * torch_err + 1e-6 * true.abs().max().item(), (err, torch_err)


def test_module_matches_torch_and_state_dict(device):
    ours = fastopt.nn.GroupNorm(4, 12, activation="silu").to(device)
    ref = torch.nn.GroupNorm(4, 12).to(device)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 12, 5, 5, device=device)
    torch.testing.assert_close(ours(x), F.silu(ref(x)))
    assert isinstance(ours, torch.nn.GroupNorm) and "activation='silu'" in repr(ours)


def test_validation_matches_torch():
    with pytest.raises(ValueError):
        fastopt.nn.GroupNorm(5, 12)
    with pytest.raises(ValueError, match="activation"):
        fastopt.nn.GroupNorm(4, 12, activation="gelu")
    with pytest.raises(RuntimeError, match="divisible by num_groups"):
        FF.group_norm(torch.randn(2, 12, 3), 5)


GROUP_NORM_ERRORS = {
    # one value per group in training: torch's ValueError
    "one-value-per-group": lambda F, d: F.group_norm(torch.randn(1, 4, 1, device=d), 4),
    "one-value-per-group-2d": lambda F, d: F.group_norm(torch.randn(1, 4, device=d), 4),
    "1d-input": lambda F, d: F.group_norm(torch.randn(4, device=d), 2),
    "not-divisible": lambda F, d: F.group_norm(torch.randn(3, 3, 5, device=d), 2),
    "weight-size": lambda F, d: F.group_norm(torch.randn(3, 6, 5, device=d), 2, torch.ones(4, device=d)),
    "weight-2d": lambda F, d: F.group_norm(torch.randn(3, 4, 5, device=d), 2, torch.ones(2, 2, device=d)),
}


@pytest.mark.parametrize("case", GROUP_NORM_ERRORS)
def test_errors_match_torch(device, case):
    """torch's exception type and message, raised before fastopt's op words them its own way."""
    assert_same_functional_error(GROUP_NORM_ERRORS[case], device)


def test_bias_error_names_the_bias():
    # torch's type and text, except that torch prints the weight's shape as the bias's.
    x = torch.randn(3, 4, 5)
    with pytest.raises(RuntimeError, match=r"Expected bias to be a vector .* but got bias of shape \[3\] and input"):
        FF.group_norm(x, 2, torch.ones(4), torch.ones(3))


@pytest.mark.parametrize(
    "num_groups,shape", [(4, (1, 4, 1)), (2, (4,)), (2, (3, 6, 5))], ids=["one-value", "1d", "channels"]
)
def test_module_errors_match_torch(device, num_groups, shape):
    ours = fastopt.nn.GroupNorm(num_groups, 4).to(device)
    ref = torch.nn.GroupNorm(num_groups, 4).to(device)
    x = torch.randn(shape, device=device)
    assert_same_error(lambda: ref(x), lambda: ours(x))


def test_non_contiguous_and_empty(device):
    # A strided view that is neither layout: copied to contiguous, not an error.
    x = torch.randn(2, 8, 6, 10, device=device)[..., ::2]
    torch.testing.assert_close(FF.group_norm(x, 4), F.group_norm(x, 4))
    # No samples: an empty output of the same shape, and zero weight
    # gradients in the weight's dtype (the kernels launch nothing).
    x = torch.randn(0, 8, 3, device=device, requires_grad=True)
    w = torch.randn(8, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)
    y = FF.group_norm(x, 4, w, b, activation="silu")
    assert y.shape == (0, 8, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 8, 3)
    for p in (w, b):
        assert p.grad.dtype == p.dtype and torch.equal(p.grad, torch.zeros_like(p))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu", "relu"])
def test_gradcheck(device, channels_last, activation):
    x, w, b, _ = _inputs((2, 6, 3, 5), 3, torch.float64, channels_last, device)
    fn = lambda x, w, b: FF.group_norm(x, 3, w, b, 1e-5, activation)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (x, w, b)])


def test_gradcheck_no_affine(device):
    x = torch.randn(2, 4, 9, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: FF.group_norm(x, 2), [x])


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_large_output_written_with_streaming_stores_matches_torch(device, fmt):
    """Outputs this large take the CPU's non-temporal store path (tensors.streamed_numel)."""
    side = math.isqrt(streamed_numel(torch.float32) // 128) + 1
    x = torch.randn(2, 64, side, side, device=device).to(memory_format=fmt).requires_grad_()
    ours, ref = fastopt.nn.GroupNorm(8, 64).to(device), torch.nn.GroupNorm(8, 64).to(device)
    grad = torch.randn_like(x)
    y = ours(x)
    (dx,) = torch.autograd.grad(y, x, grad)
    y_ref = ref(x)
    (dx_ref,) = torch.autograd.grad(y_ref, x, grad)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(dx, dx_ref)
    rows = torch.randn(streamed_numel(torch.float32) // 768 + 1, 768, device=device, requires_grad=True)
    ln, ln_ref = fastopt.nn.LayerNorm(768).to(device), torch.nn.LayerNorm(768).to(device)
    out, out_ref = ln(rows), ln_ref(rows)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(torch.autograd.grad(out, rows, out)[0], torch.autograd.grad(out_ref, rows, out_ref)[0])


# Larger cases for the paths a GPU takes: groups and row chunks long enough
# to be split across several partial sums, sizes that allow 16-byte vectors,
# sizes that do not (odd S, C = 6), and a misaligned start.
LONG_CASES = [
    ((2, 8, 40, 36), 2, False),  # split groups, vector loads
    ((3, 6, 33, 17), 3, False),  # odd sizes: element loads
    ((2, 8, 40, 36), 8, True),   # instance-norm grouping of a misaligned tensor
]


@pytest.mark.parametrize("shape,groups,misaligned", LONG_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_long_groups_match_float64(device, shape, groups, misaligned, channels_last):
    x, w, b, grad = _inputs(shape, groups, torch.float32, channels_last, device)
    if channels_last:
        grad = grad.to(memory_format=torch.channels_last)
    if misaligned:
        grad = unaligned(grad)

    # Misaligned in the layout under test: the leaf itself, not a clone of it.
    def leaf(t: torch.Tensor) -> torch.Tensor:
        return unaligned(t) if misaligned and t is x else t.detach().clone()

    fn = lambda x, w, b: FF.group_norm(x, groups, w, b, 1e-5, "silu")  # noqa: E731
    y, grads = _run(fn, x, w, b, grad, leaf)
    exact = lambda x, w, b: F.silu(F.group_norm(x, groups, w, b, 1e-5))  # noqa: E731
    y_ref, grads_ref = _run(exact, *(t.double() for t in (x, w, b)), grad.double())
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)
    # dx sums over a group, dw and db over the whole batch: looser.
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.double(), g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bitwise_reproducible(device, channels_last):
    # Partial sums are combined in an order fixed by the shape, never by timing.
    x, w, b, grad = _inputs((2, 8, 40, 36), 4, torch.float32, channels_last, device)
    fn = lambda x, w, b: FF.group_norm(x, 4, w, b, 1e-5, "relu")  # noqa: E731
    (y1, g1), (y2, g2) = _run(fn, x, w, b, grad), _run(fn, x, w, b, grad)
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, c) for a, c in zip(g1, g2))


def test_backward_rejects_grad_on_another_device(device):
    if device == "cpu":
        pytest.skip("needs a device other than the CPU")
    x = torch.randn(2, 4, 3, 5, device=device)
    y, mean, rstd = torch.ops.fastopt.group_norm_fwd(x, None, None, 2, 1e-5, 0)
    # On the CPU and in another layout: a layout copy must not move it over.
    grad = torch.randn(2, 4, 3, 5).to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.fastopt.group_norm_bwd(grad, x, mean, rstd, None, None, 2, 0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "make,shape,channels_last",
    [
        # One thread's sums can hold a whole group on CUDA in these two: a
        # clamp of the variance there once turned NaN into 0.
        (lambda ns: ns.GroupNorm(4, 8), (2, 8, 2), False),
        (lambda ns: ns.InstanceNorm2d(1024, track_running_stats=True), (2, 1024, 4, 4), True),
        (lambda ns: ns.GroupNorm(2, 8), (2, 8, 5, 3), True),
    ],
    ids=["gn_tiny_groups", "in_many_channels_nhwc", "gn_nhwc"],
)
def test_a_nonfinite_value_spreads_through_its_group_as_in_torch(device, bad, make, shape, channels_last):
    """A NaN or an inf makes its group's variance NaN (inf - inf), so the whole
    group's output is NaN, not -inf or a finite value; other groups are untouched."""
    x = torch.randn(shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x[0, 1].view(-1)[0] = bad
    ours, ref = make(fastopt.nn).to(device), make(torch.nn).to(device)
    got, want = ours(x), ref(x)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    torch.testing.assert_close(got, want, equal_nan=True)
    buffers = dict(ours.named_buffers())
    for name, b in ref.named_buffers():
        # An inf among the values that shift the channels-last sums once made
        # the instance's running_mean NaN where torch's is inf (NOTE: [moment
        # shift]: the shift must be finite).
        torch.testing.assert_close(buffers[name], b, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_large_mean_does_not_cancel(device, dtype, channels_last, groups):
    """Groups whose mean is 1e4 times their spread: E[x^2] - E[x]^2 would lose
    every digit of the variance in float32 and half of them in float64.

    GroupNorm does not change under a shift of x, so the reference normalizes
    x - 1e4 in float64, a subtraction that is exact for these values.
    """
    x, w, b, grad = _inputs((2, 8, 6, 5), groups, dtype, channels_last, device)
    x = (x.double() + 1e4).to(dtype)
    fn = lambda x, w, b: FF.group_norm(x, groups, w, b, 1e-5)  # noqa: E731
    y, grads = _run(fn, x, w, b, grad)
    shifted = lambda x, w, b: F.group_norm(x - 1e4, groups, w, b, 1e-5)  # noqa: E731
    y_ref, grads_ref = _run(shifted, *(t.double() for t in (x, w, b)), grad.double())
    # float32: rounding the mean (about 1e4, float32 spacing 1e-3) to float32
    # alone moves x - mean by up to 2.5e-4 of the spread (2); measured at most
    # 1.6e-4. float64 measured at most 1.4e-12. torch's channels-last kernel
    # misses both bounds (float64: about 1e-8 here).
    bound = 1e-10 if dtype == torch.float64 else 1e-3
    for got, want in zip([y, *grads], [y_ref, *grads_ref]):
        assert (got.double() - want).abs().max().item() <= bound * want.abs().max().item()
