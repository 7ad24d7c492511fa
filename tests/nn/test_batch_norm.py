"""fastopt.nn.BatchNorm1d/2d/3d and functional.batch_norm against torch.nn.BatchNorm*."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import fastopt.nn
from fastopt.nn import functional as FF
from fastopt.nn._batch_norm_functional import SyncBatchNormFunction

from ..optim.reference import assert_same_functional_error
from .tensors import assert_within_twice_torch_error

# Every test under each compiled CPU kernel variant (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_cpu_isa")

MODULES = {
    1: (fastopt.nn.BatchNorm1d, torch.nn.BatchNorm1d),
    2: (fastopt.nn.BatchNorm2d, torch.nn.BatchNorm2d),
    3: (fastopt.nn.BatchNorm3d, torch.nn.BatchNorm3d),
}

# (shape, what the case is for)
SHAPES = [
    ((4, 7), "1d (N, C): rows layout, C = 7 not a multiple of the SIMD width"),
    ((3, 5, 11), "1d (N, C, L): odd length"),
    ((2, 7, 9, 7), "2d: C = 7, HW = 9x7, neither a multiple of the SIMD width"),
    ((2, 3, 1, 1), "2d: N = 2 with 1x1 spatial, two values per channel (the minimum in training)"),
    ((3, 20, 5, 6), "2d: C = 20, a full SIMD vector of channels plus a tail"),
    ((2, 4, 3, 4, 5), "3d: NCDHW / NDHWC"),
]
SHAPE_IDS = [str(s) for s, _ in SHAPES]


def _module_pair(shape, device, dtype=torch.float32, **kwargs):
    ours_cls, ref_cls = MODULES[max(len(shape) - 2, 1)]
    ref = ref_cls(shape[1], **kwargs).to(device=device, dtype=dtype)
    if ref.affine:
        with torch.no_grad():  # non-trivial parameters, so a lost weight or bias shows
            ref.weight.copy_(torch.randn(shape[1]) * 0.5 + 1)
            ref.bias.copy_(torch.randn(shape[1]))
    ours = ours_cls(shape[1], **kwargs).to(device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _layouts(shape):
    """Memory formats worth testing for x of this shape."""
    if len(shape) == 4:
        return [torch.contiguous_format, torch.channels_last]
    if len(shape) == 5:
        return [torch.contiguous_format, torch.channels_last_3d]
    return [torch.contiguous_format]


CASES = [(s, f) for s, _ in SHAPES for f in _layouts(s)]
CASE_IDS = [f"{s}-{'cl' if f != torch.contiguous_format else 'contig'}" for s, f in CASES]


def _input(shape, fmt, device, dtype=torch.float32):
    # An offset mean, so that a statistic computed as E[x^2] - E[x]^2 would show.
    x = (torch.randn(shape, dtype=torch.float64, device=device) * 2 + 3).to(dtype)
    return x.contiguous(memory_format=fmt)


def _step(module, x, grad):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(grad)
    return y.detach(), x.grad


def _assert_params_and_buffers_close(ours, ref, **tol):
    if ref.affine:
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **tol)
    for name, buf in ref.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], buf, **tol)


def _results(module, x, grad):
    """Everything a step produces: y, dx, the parameter gradients and every buffer."""
    y, dx = _step(module, x, grad)
    out = {"y": y, "dx": dx}
    if module.affine:
        out.update(dweight=module.weight.grad, dbias=module.bias.grad)
    out.update({name: buf for name, buf in module.named_buffers()})
    return out


def _assert_matches(got: dict, torch_got: dict, exact: dict, scales: dict) -> None:
    """float64: equal to torch within assert_close's tolerances. Lower precisions: against the
    float64 reference, at most twice torch's own error plus a few rounding units of the
    quantity's scale. dx is a sum of terms of size |dy| * invstd * |w| that cancel when a
    channel's values nearly coincide (N = 2, 1x1): there torch and fastopt both lose digits
    to rounding in different places, so its rounding unit is that of the terms, not of dx."""
    assert got.keys() == torch_got.keys()
    for name, ref in torch_got.items():
        value = got[name]
        assert value.dtype == ref.dtype and value.shape == ref.shape, name
        if ref.dtype == torch.float64 or name == "num_batches_tracked":
            torch.testing.assert_close(value, ref, msg=name)
            continue
        if exact[name].numel() == 0:
            continue
        assert_within_twice_torch_error(name, value, ref, exact[name], scales.get(name))


def _compare_step(ours, ref, x, grad):
    exact = copy.deepcopy(ref).double()
    for m in (ours, ref, exact):
        m.zero_grad()
    got = _results(ours, x, grad)
    # The size of dx's terms, from the batch's exact statistics.
    dims = [d for d in range(x.dim()) if d != 1]
    invstd = (x.double().var(dims, unbiased=False) + ref.eps).rsqrt() if x.numel() else torch.ones(1)
    w = ref.weight.detach().double().abs() if ref.affine else 1.0
    scales = {"dx": grad.double().abs().max().item() * (invstd * w).max().item()} if x.numel() else {}
    _assert_matches(got, _results(ref, x, grad), _results(exact, x.double(), grad.double()), scales)
    return got


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_plane_tail_length(device, dtype):
    """Planes of 1 to 33 elements: every remainder after the SIMD blocks (up to 32 bf16 lanes).

    Channels-first statistics, backward sums and the affine pass end each
    plane in the scalar tail of the SIMD loops (norm_loops.h); a tail that is
    skipped, doubled or read past the plane shows at one of these lengths.
    """
    for S in range(1, 34):
        shape = (3, 4, 1, S)
        ours, ref = _module_pair(shape, device, dtype)
        _compare_step(ours, ref, _input(shape, torch.contiguous_format, device, dtype), torch.randn(shape, device=device, dtype=dtype))


@pytest.mark.parametrize("shape,fmt", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "config",
    [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}],
    ids=["default", "momentum=None", "affine=False", "no-running-stats"],
)
def test_training_matches_torch(device, shape, fmt, dtype, config):
    """Several training steps: outputs, dx, dweight, dbias and every buffer after each."""
    ours, ref = _module_pair(shape, device, dtype, **config)
    for step in range(3):
        x = _input(shape, fmt, device, dtype)
        grad = torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=fmt)
        got = _compare_step(ours, ref, x, grad)
        # Outputs and input gradients keep the input's memory format.
        assert got["y"].is_contiguous(memory_format=fmt) and got["dx"].is_contiguous(memory_format=fmt)
    # The buffers were compared to torch's after every step; the batch count too.
    if ref.track_running_stats:
        assert int(ours.num_batches_tracked) == 3


@pytest.mark.parametrize("shape,fmt", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("config", [{}, {"affine": False}], ids=["affine", "no-affine"])
def test_eval_matches_torch(device, shape, fmt, config):
    """Evaluation mode normalizes with the running statistics, forward and backward."""
    ours, ref = _module_pair(shape, device, **config)
    with torch.no_grad():
        for m in (ours, ref):
            m.running_mean.copy_(torch.linspace(-1, 2, shape[1]))
            m.running_var.copy_(torch.linspace(0.5, 3, shape[1]))
    ours.eval()
    ref.eval()
    x = _input(shape, fmt, device)
    grad = torch.randn(shape, device=device)
    y, dx = _step(ours, x, grad)
    y_ref, dx_ref = _step(ref, x, grad)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(dx, dx_ref)
    _assert_params_and_buffers_close(ours, ref)
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("param_dtype", ["same", "float32"])
def test_low_precision_within_twice_torch_error(device, fmt, dtype, param_dtype):
    """Against a float64 reference, fastopt's error is at most twice torch's own.

    Statistics are float32 inside; running stats stay in the parameter dtype
    (the module's, or float32 parameters under a 16-bit input).
    """
    shape = (4, 24, 7, 9)
    pdtype = dtype if param_dtype == "same" else torch.float32
    ours, ref = _module_pair(shape, device, pdtype)
    exact = MODULES[2][1](shape[1]).to(device=device, dtype=torch.float64)
    exact.load_state_dict(ref.state_dict())
    x = _input(shape, fmt, device, dtype)
    grad = torch.randn(shape, device=device, dtype=dtype)
    got = _step(ours, x, grad)
    theirs = _step(ref, x, grad)
    true = _step(exact, x.double(), grad.double())
    for name in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"):
        pick = {
            "y": lambda r, m: r[0], "dx": lambda r, m: r[1], "dweight": lambda r, m: m.weight.grad,
            "dbias": lambda r, m: m.bias.grad, "running_mean": lambda r, m: m.running_mean,
            "running_var": lambda r, m: m.running_var,
        }[name]  # fmt: skip
        ref_true = pick(true, exact)
        err = (pick(got, ours).double() - ref_true).abs().max().item()
        torch_err = (pick(theirs, ref).double() - ref_true).abs().max().item()
        assert err <= 2 * torch_err + 1e-6 * ref_true.abs().max().item(), (name, err, torch_err)
        assert pick(got, ours).dtype == pick(theirs, ref).dtype, name
    assert got[0].is_contiguous(memory_format=fmt)


def test_large_mean_does_not_cancel(device):
    """A channel whose mean is 1e4 times its spread: E[x^2] - E[x]^2 would lose every digit in float32."""
    x = (torch.randn(8, 3, 16, 16, dtype=torch.float64, device=device) + 1e4).float()
    ours, ref = _module_pair(x.shape, device)
    exact = torch.nn.BatchNorm2d(3).to(device=device, dtype=torch.float64)
    exact.load_state_dict(ref.state_dict())
    y = ours(x)
    y_exact = exact(x.double())
    assert (y.double() - y_exact).abs().max().item() < 5e-3  # float32 rounding of x itself is ~5e-4 / 1
    torch.testing.assert_close(ours.running_var.double(), exact.running_var, rtol=1e-3, atol=1e-6)


def test_nan_in_the_batch_reaches_the_running_variance(device):
    """A diverging run must show in the running statistics: max(0, NaN) once made the variance finite."""
    x = torch.randn(4, 2, 3, device=device)
    x[0, 0, 0] = float("nan")
    ours, ref = _module_pair(x.shape, device)
    ours(x)
    ref(x)
    assert ours.running_var[0].isnan() and ref.running_var[0].isnan()
    torch.testing.assert_close(ours.running_mean, ref.running_mean, equal_nan=True)
    torch.testing.assert_close(ours.running_var, ref.running_var, equal_nan=True)


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_nonfinite_values_give_torchs_running_statistics(device, bad, channels_last):
    """An inf at a channel's first position, among the values that shift its
    sums (NOTE: [moment shift]), and one further on in another channel: the
    running mean is that inf (not NaN) and the variance NaN, as in torch.

    torch's reference runs on the contiguous input: its CUDA channels-last
    kernel merges partial means of inf and inf into NaN, where fastopt keeps
    the inf as torch's other kernels do."""
    x = torch.randn(4, 3, 5, 5, device=device)
    x[0, 1, 0, 0] = bad
    x[2, 2, 3, 3] = bad
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, ref = _module_pair(x.shape, device)
    torch.testing.assert_close(ours(x), ref(x.contiguous()), equal_nan=True)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, equal_nan=True)
    torch.testing.assert_close(ours.running_var, ref.running_var, equal_nan=True)


def test_strided_running_statistics_are_updated_in_place(device):
    """Views that are not contiguous, as torch accepts: the update lands in the viewed storage."""
    x = torch.randn(4, 3, device=device)
    stats = torch.stack([torch.zeros(3, device=device), torch.ones(3, device=device)], 1)
    expected = stats.clone()
    y = FF.batch_norm(x, stats[:, 0], stats[:, 1], training=True)
    y_ref = F.batch_norm(x, expected[:, 0], expected[:, 1], training=True)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(stats, expected)
    assert not torch.equal(stats[:, 1], torch.ones(3, device=device))


def test_non_contiguous_input(device):
    """A strided view that is neither layout is read correctly (made contiguous), and the result matches."""
    ours, ref = _module_pair((4, 6, 5, 5), device)
    x = torch.randn(4, 6, 5, 10, device=device)[..., ::2]
    grad = torch.randn(4, 6, 5, 5, device=device)
    y, dx = _step(ours, x, grad)
    y_ref, dx_ref = _step(ref, x, grad)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(dx, dx_ref)
    _assert_params_and_buffers_close(ours, ref)


def test_gradient_in_another_layout(device):
    """A contiguous upstream gradient for a channels-last input (autograd may hand over either)."""
    ours, ref = _module_pair((2, 6, 4, 5), device)
    x = _input((2, 6, 4, 5), torch.channels_last, device)
    grad = torch.randn(2, 6, 4, 5, device=device)  # contiguous
    y, dx = _step(ours, x, grad)
    y_ref, dx_ref = _step(ref, x, grad)
    torch.testing.assert_close(dx, dx_ref)
    assert dx.is_contiguous(memory_format=torch.channels_last)


def test_long_channel_precision(device):
    """A channel of 2^20 values: partial sums go to float64, so float32 x gives float32-accurate stats."""
    x = torch.rand(4, 2, 512, 512, device=device) + 0.5
    y = FF.batch_norm(x, None, None, training=True)
    exact = F.batch_norm(x.double(), None, None, training=True)
    assert (y.double() - exact).abs().max().item() < 1e-5


def test_empty_batch_matches_torch(device):
    """No samples: an empty output, zero parameter gradients, running stats unchanged, as torch."""
    ours, ref = _module_pair((0, 3, 4, 4), device)
    x = torch.randn(0, 3, 4, 4, device=device)
    grad = torch.randn(0, 3, 4, 4, device=device)
    y, dx = _step(ours, x, grad)
    y_ref, dx_ref = _step(ref, x, grad)
    assert y.shape == y_ref.shape and dx.shape == dx_ref.shape
    _assert_params_and_buffers_close(ours, ref)
    ours.eval()
    assert ours(x).shape == (0, 3, 4, 4)


def test_errors_match_torch(device):
    bn = fastopt.nn.BatchNorm2d(3).to(device)
    # One value per channel in training: torch's ValueError.
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bn(torch.randn(1, 3, 1, 1, device=device))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fastopt.nn.BatchNorm1d(3).to(device)(torch.randn(1, 3, device=device))
    # Wrong channel count: torch's RuntimeError, naming running_mean.
    with pytest.raises(RuntimeError, match="running_mean should contain 4 elements not 3"):
        bn(torch.randn(2, 4, 3, 3, device=device))
    bn.eval()
    with pytest.raises(RuntimeError, match="running_mean should contain 4 elements not 3"):
        bn(torch.randn(2, 4, 3, 3, device=device))
    # Wrong rank: torch's own _check_input_dim.
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(torch.randn(2, 3, 3, device=device))
    # A weight of the wrong size through the functional form.
    with pytest.raises(RuntimeError, match="weight"):
        FF.batch_norm(torch.randn(2, 3, 4, device=device), None, None, torch.ones(4, device=device), None, True)
    # torch's exception type for a dtype without a kernel.
    with pytest.raises(NotImplementedError, match="float32, float64"):
        FF.batch_norm(torch.ones(2, 3, 4, dtype=torch.int32, device=device), None, None, training=True)


FUNCTIONAL_ERRORS = {
    "weight-size": lambda F, x, t: F.batch_norm(x, None, None, t(4), None, True),
    "bias-size": lambda F, x, t: F.batch_norm(x, None, None, None, t(4), True),
    "weight-size-eval": lambda F, x, t: F.batch_norm(x, t(6), t(6), t(4), None, False),
    "running-var-size": lambda F, x, t: F.batch_norm(x, t(6), t(5), None, None, True),
    # one value per channel: torch's ValueError comes before the size checks
    "one-value-and-weight-size": lambda F, x, t: F.batch_norm(x[:1, :, :1], None, None, t(4), None, True),
}


@pytest.mark.parametrize("case", FUNCTIONAL_ERRORS)
def test_functional_errors_match_torch(device, case):
    """torch's type and message, raised before fastopt's op words them its own way."""
    x = torch.randn(3, 6, 5, device=device)
    assert_same_functional_error(FUNCTIONAL_ERRORS[case], x, lambda n: torch.ones(n, device=device))


@pytest.fixture
def one_process_group():
    """A gloo group of this process alone, on an in-memory store: SyncBatchNormFunction's
    all_reduces run, with no port and no second process."""
    if not dist.is_available() or not dist.is_gloo_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed with gloo, and no process group yet")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_sync_batch_norm_double_backward_raises(one_process_group):
    """SyncBatchNormFunction's backward has no derivative of its own: differentiating it
    (a gradient penalty, a Hessian-vector product) raises instead of dropping that term."""
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    head = torch.randn(5, dtype=torch.float64, requires_grad=True)  # makes the incoming gradient require grad
    y = SyncBatchNormFunction.apply(x, weight, bias, None, None, 1e-5, 0.1, one_process_group, 1)
    torch.testing.assert_close(y, F.batch_norm(x, None, None, weight, bias, True))
    (grad_x,) = torch.autograd.grad((y * head).sum(), x, create_graph=True)
    (grad_x_ref,) = torch.autograd.grad((F.batch_norm(x, None, None, weight, bias, True) * head).sum(), x)
    torch.testing.assert_close(grad_x, grad_x_ref)  # first order: correct
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad_x.square().sum().backward()


def test_needs_input_grad(device):
    """Frozen input: only the parameter gradients (the reduction pass); frozen parameters: only dx."""
    ours, ref = _module_pair((3, 5, 4, 4), device)
    x = _input((3, 5, 4, 4), torch.contiguous_format, device)
    grad = torch.randn(3, 5, 4, 4, device=device)
    ours(x).backward(grad)  # x does not require grad
    ref(x).backward(grad)
    _assert_params_and_buffers_close(ours, ref)
    for m in (ours, ref):
        m.weight.requires_grad_(False)
        m.bias.requires_grad_(False)
    _, dx = _step(ours, x, grad)
    _, dx_ref = _step(ref, x, grad)
    torch.testing.assert_close(dx, dx_ref)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_gradcheck_training(device, fmt):
    x = _input((3, 4, 3, 5), fmt, device, torch.float64).requires_grad_()
    w = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, w, b: FF.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [x, w, b])


def test_gradcheck_eval_and_no_affine(device):
    x = torch.randn(4, 3, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    rm = torch.randn(3, dtype=torch.float64, device=device)
    rv = torch.rand(3, dtype=torch.float64, device=device) + 0.5
    assert torch.autograd.gradcheck(lambda x, w, b: FF.batch_norm(x, rm, rv, w, b, training=False), [x, w, b])
    assert torch.autograd.gradcheck(lambda x: FF.batch_norm(x, None, None, training=True), [x])


def test_state_dict_round_trip_and_signature(device):
    """torch's state_dict loads into fastopt and back; signature, defaults and repr are torch's."""
    for dims, (ours_cls, ref_cls) in MODULES.items():
        assert inspect.signature(ours_cls.__init__) == inspect.signature(ref_cls.__init__)
        ref = ref_cls(5, momentum=0.3).to(device)
        ref(torch.randn((4, 5) + (3,) * (dims if dims > 1 else 0), device=device))  # non-trivial buffers
        ours = ours_cls(5, momentum=0.3).to(device)
        ours.load_state_dict(ref.state_dict())
        back = ref_cls(5, momentum=0.3).to(device)
        back.load_state_dict(ours.state_dict())
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(back.state_dict()[key], value)
        assert ours.state_dict().keys() == ref.state_dict().keys()
        assert repr(ours) == repr(ref)
        assert isinstance(ours, ref_cls)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_fuse_conv_bn_eval(device, fmt):
    """torch.nn.utils.fusion.fuse_conv_bn_eval folds a fastopt BatchNorm2d into its conv."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1).to(device)
    bn, _ = _module_pair((2, 6, 5, 5), device)
    bn.train()
    for _ in range(3):  # running statistics that are not the initial ones
        bn(conv(torch.randn(4, 3, 5, 5, device=device)))
    conv.eval()
    bn.eval()
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    x = torch.randn(2, 3, 5, 5, device=device).contiguous(memory_format=fmt)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_large_tensor_matches_torch(device, fmt):
    """34 MB outputs, past the CPU's threshold for non-temporal stores (tests/nn/tensors.streamed_numel).
    HW = 129x129 makes most planes start off a vector boundary, so the aligned-prefix
    handling is exercised."""
    shape = (8, 64, 129, 129)
    ours, ref = _module_pair(shape, device)
    x = _input(shape, fmt, device)
    grad = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    _compare_step(ours, ref, x, grad)
    # Evaluation with the same running statistics (after that step torch's channels-last
    # estimates are ~5e-6 off the float64 ones, fastopt's ~1e-7, so they are not the same).
    ours.load_state_dict(ref.state_dict())
    ours.eval()
    ref.eval()
    exact = copy.deepcopy(ref).double()
    with torch.no_grad():  # 8.5M outputs: a few are 2 ulp from torch's, so judged against float64
        _assert_matches({"y": ours(x)}, {"y": ref(x)}, {"y": exact(x.double())}, {})


def test_channels_last_1d_and_functional_signature(device):
    """(N, C, L) stored as (N, L, C) (a transposed NLC tensor) runs natively as rows; the
    functional form has torch's parameters and defaults."""
    ours, ref = _module_pair((3, 6, 10), device)
    x = torch.randn(3, 10, 6, device=device).transpose(1, 2)
    grad = torch.randn(3, 6, 10, device=device)
    got = _compare_step(ours, ref, x, grad)
    assert got["y"].stride() == x.stride()  # the output keeps the input's layout
    assert inspect.signature(FF.batch_norm).parameters.keys() == inspect.signature(F.batch_norm).parameters.keys()
    for name, p in inspect.signature(F.batch_norm).parameters.items():
        assert inspect.signature(FF.batch_norm).parameters[name].default == p.default, name


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_running_stats_requiring_grad_are_refused(device, training):
    """The ops give running statistics no gradient, so, as torch, they refuse
    them requiring grad instead of leaving a silent None."""
    x = torch.randn(4, 3, 5, device=device)
    mean = torch.zeros(3, device=device, requires_grad=True)
    var = torch.ones(3, device=device)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'running_mean'"):
        FF.batch_norm(x, mean, var, training=training)
    with torch.no_grad():  # as torch: only autograd minds
        FF.batch_norm(x, mean, var, training=training)


def test_parameters_swapped_in_by_torch_utilities_are_used(device):
    """The module reads its parameters and buffers from nn.Module's dicts when
    they are there; tensors that torch's utilities put elsewhere must still be
    the ones used: a parametrization (a property), torch.func.functional_call
    (swapped into the dicts), and a weight replaced by a plain attribute."""
    from torch.nn.utils import parametrize

    x = torch.randn(4, 3, 2, 2, device=device)

    class Doubled(torch.nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    ours, ref = fastopt.nn.BatchNorm2d(3).to(device), torch.nn.BatchNorm2d(3).to(device)
    for m in (ours, ref):
        torch.nn.init.uniform_(m.weight)
        parametrize.register_parametrization(m, "weight", Doubled())
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x))

    ours, ref = fastopt.nn.BatchNorm2d(3).to(device), torch.nn.BatchNorm2d(3).to(device)
    swapped = {"weight": torch.rand(3, device=device), "running_mean": torch.randn(3, device=device)}
    torch.testing.assert_close(
        torch.func.functional_call(ours.eval(), swapped, (x,)), torch.func.functional_call(ref.eval(), swapped, (x,))
    )

    ours, ref = fastopt.nn.BatchNorm2d(3).to(device).eval(), torch.nn.BatchNorm2d(3).to(device).eval()
    for m in (ours, ref):
        del m._parameters["bias"]
        m.bias = torch.full((3,), 0.5, device=device)  # a plain attribute now
    torch.testing.assert_close(ours(x), ref(x))
