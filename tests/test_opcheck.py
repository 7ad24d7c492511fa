"""torch.library.opcheck over every fastopt op, on every device.

opcheck verifies the schema against what the kernel really mutates, the fake
kernel against the real one, and that the op traces under AOTAutograd.
"""

from __future__ import annotations

import pytest
import torch

import fastopt  # noqa: F401  (registers the ops)

# Covers a 0-dim tensor, an empty one, a SIMD tail and a 2-d tensor.
SHAPES = [(), (0,), (7,), (130, 3)]


def _tensors(device: str, make=torch.randn, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [make(s, device=device, dtype=dtype) for s in SHAPES]


def _steps(device: str) -> list[torch.Tensor]:
    # CPU counters for CPU params, device counters for CUDA params.
    return [torch.tensor(3.0, device=device) for _ in SHAPES]


def _amp(device: str, amp: bool) -> dict:
    if not amp:
        return {}
    return dict(grad_scale=torch.tensor(8.0, device=device), found_inf=torch.tensor(0.0, device=device))


def _adam_args(device: str, amsgrad: bool):
    max_exp_avg_sqs = _tensors(device, torch.rand) if amsgrad else []
    return (_tensors(device), _tensors(device), _tensors(device, torch.rand), _tensors(device, torch.rand),
            max_exp_avg_sqs, _steps(device))  # fmt: skip


KWARGS = dict(beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, maximize=False, decoupled_weight_decay=True)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("amp", [False, True])
def test_adam(device, amsgrad, amp):
    torch.library.opcheck(
        torch.ops.fastopt.adam_.default,
        _adam_args(device, amsgrad),
        dict(lr=1e-3, amsgrad=amsgrad, **KWARGS, **_amp(device, amp)),
    )


def test_adam_tensor_lr(device):
    torch.library.opcheck(
        torch.ops.fastopt.adam_.tensor_lr,
        _adam_args(device, False),
        dict(lr=torch.tensor(1e-3, device=device), amsgrad=False, **KWARGS),
    )


def _rmsprop_args(device: str, centered: bool, momentum: bool):
    # grad_avg**2 <= square_avg keeps the centered sqrt real
    grad_avgs = [g * 0.1 for g in _tensors(device, torch.rand)] if centered else []
    momentum_buffers = _tensors(device) if momentum else []
    return (_tensors(device), _tensors(device), _tensors(device, torch.rand), grad_avgs, momentum_buffers,
            _steps(device))  # fmt: skip


RMSPROP_KWARGS = dict(alpha=0.99, eps=1e-8, weight_decay=0.01, maximize=False)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("amp", [False, True])
def test_rmsprop(device, centered, momentum, amp):
    torch.library.opcheck(
        torch.ops.fastopt.rmsprop_.default,
        _rmsprop_args(device, centered, momentum),
        dict(lr=1e-2, momentum=0.9 if momentum else 0.0, centered=centered, **RMSPROP_KWARGS, **_amp(device, amp)),
    )


def test_rmsprop_tensor_lr(device):
    torch.library.opcheck(
        torch.ops.fastopt.rmsprop_.tensor_lr,
        _rmsprop_args(device, True, True),
        dict(lr=torch.tensor(1e-2, device=device), momentum=0.9, centered=True, **RMSPROP_KWARGS),
    )


def _sgd_args(device: str, momentum: bool):
    return (_tensors(device), _tensors(device), _tensors(device) if momentum else [])


SGD_KWARGS = dict(dampening=0.1, weight_decay=0.01, nesterov=False, maximize=False)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("is_first_step", [False, True])
@pytest.mark.parametrize("amp", [False, True])
def test_sgd(device, momentum, is_first_step, amp):
    torch.library.opcheck(
        torch.ops.fastopt.sgd_.default,
        _sgd_args(device, momentum != 0),
        dict(lr=1e-2, momentum=momentum, is_first_step=is_first_step, **SGD_KWARGS, **_amp(device, amp)),
    )


def test_sgd_tensor_lr(device):
    torch.library.opcheck(
        torch.ops.fastopt.sgd_.tensor_lr,
        _sgd_args(device, True),
        dict(lr=torch.tensor(1e-2, device=device), momentum=0.9, is_first_step=False, **SGD_KWARGS),
    )


def _adagrad_args(device: str):
    return (_tensors(device), _tensors(device), _tensors(device, torch.rand), _steps(device))


ADAGRAD_KWARGS = dict(lr_decay=0.1, weight_decay=0.01, eps=1e-10, maximize=False)


@pytest.mark.parametrize("amp", [False, True])
def test_adagrad(device, amp):
    torch.library.opcheck(
        torch.ops.fastopt.adagrad_.default, _adagrad_args(device), dict(lr=1e-2, **ADAGRAD_KWARGS, **_amp(device, amp))
    )


def test_adagrad_tensor_lr(device):
    torch.library.opcheck(
        torch.ops.fastopt.adagrad_.tensor_lr,
        _adagrad_args(device),
        dict(lr=torch.tensor(1e-2, device=device), **ADAGRAD_KWARGS),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema(device, dtype):
    shadow, params = _tensors(device, dtype=dtype), _tensors(device, dtype=dtype)
    torch.library.opcheck(torch.ops.fastopt.ema_.default, (shadow, params), dict(decay=0.9))


def test_ema_tensor_decay(device):
    shadow, params = _tensors(device), _tensors(device)
    decay = torch.tensor(0.9, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastopt.ema_.tensor_decay, (shadow, params), dict(decay=decay))


# Dropout: an odd size that is not a multiple of a Philox block, dense
# non-contiguous inputs (a transposed view, a channels-last tensor: their
# results keep their strides, and the fake kernels must agree), one with gaps
# (a contiguous result) and an empty one.
@pytest.mark.parametrize(
    "make",
    [
        lambda d: torch.randn(7, 19, device=d),
        lambda d: torch.randn(19, 7, device=d).t(),
        lambda d: torch.randn(0, 3, device=d),
        lambda d: torch.randn(2, 3, 4, 5, device=d).contiguous(memory_format=torch.channels_last),
        lambda d: torch.randn(7, 38, device=d)[:, ::2],
    ],
)
def test_dropout(device, make):
    seed = torch.tensor([3, 4], device=device)
    x = make(device)
    torch.library.opcheck(torch.ops.fastopt.dropout.default, (x.requires_grad_(), seed, 0.3))
    torch.library.opcheck(torch.ops.fastopt.dropout_.default, (x.detach().clone(), seed, 0.3))
    if x.numel():
        torch.library.opcheck(torch.ops.fastopt.dropout.default, (x, seed, 0.3, x.size(-1)))
    # The 1-bit mask mode: the op that draws and packs the mask, and the one that applies it.
    torch.library.opcheck(torch.ops.fastopt.dropout_bits.default, (x, seed, 0.3))
    _, bits = torch.ops.fastopt.dropout_bits(x.detach(), seed, 0.3)
    torch.library.opcheck(torch.ops.fastopt.dropout_from_bits.default, (x, bits, 0.3))


@pytest.mark.parametrize("with_bias", [False, True])
def test_dropout_add(device, with_bias):
    seed = torch.tensor([3, 4], device=device)
    x, residual = torch.randn(5, 19, device=device), torch.randn(5, 19, device=device)
    bias = torch.randn(19, device=device, requires_grad=True) if with_bias else None
    torch.library.opcheck(
        torch.ops.fastopt.dropout_add.default, (x.requires_grad_(), residual.requires_grad_(), bias, seed, 0.3)
    )
def _norm_inputs(device: str, channels_last: bool, dtype: torch.dtype = torch.float32):
    x = torch.randn(2, 6, 3, 5, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, torch.randn(6, device=device, dtype=dtype), torch.randn(6, device=device, dtype=dtype)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [0, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm(device, channels_last, activation, dtype):
    x, w, b = _norm_inputs(device, channels_last, dtype)
    torch.library.opcheck(torch.ops.fastopt.group_norm_fwd.default, (x, w, b, 3, 1e-5, activation))
    y, mean, rstd = torch.ops.fastopt.group_norm_fwd(x, w, b, 3, 1e-5, activation)
    torch.library.opcheck(
        torch.ops.fastopt.group_norm_bwd.default, (torch.randn_like(y), x, mean, rstd, w, b, 3, activation)
    )


@pytest.mark.parametrize("normalized_ndim", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_layer_norm_mode(device, normalized_ndim, channels_last):
    """normalized_ndim > 0: a LayerNorm over x's trailing dims, x taken unreshaped (any strides)."""
    x, _, _ = _norm_inputs(device, channels_last)
    shape = x.shape[x.dim() - normalized_ndim :]
    w, b = torch.randn(shape, device=device), torch.randn(shape, device=device)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1, 1e-5, 0, normalized_ndim)
    torch.library.opcheck(torch.ops.fastopt.group_norm_fwd.default, args)
    y, mean, rstd = torch.ops.fastopt.group_norm_fwd(*args)
    assert mean.shape == (x.numel() // w.numel(), 1)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, shape, w, b, 1e-5))
    torch.library.opcheck(
        torch.ops.fastopt.group_norm_bwd.default,
        (torch.randn_like(y), x.detach(), mean, rstd, w.detach(), b.detach(), 1, 0, normalized_ndim),
    )


def test_layer_norm_mode_refuses_bad_arguments(device):
    x, w, b = _norm_inputs(device, False)
    with pytest.raises(RuntimeError, match="normalized_ndim must be in \\[0, 4\\]"):
        torch.ops.fastopt.group_norm_fwd(x, None, None, 1, 1e-5, 0, 5)
    with pytest.raises(RuntimeError, match="normalized_ndim must be in"):
        torch.ops.fastopt.group_norm_fwd(x, None, None, 1, 1e-5, 0, -1)
    with pytest.raises(RuntimeError, match="has one group, got num_groups=2"):
        torch.ops.fastopt.group_norm_fwd(x, None, None, 2, 1e-5, 0, 1)


def test_group_norm_no_affine(device):
    x, _, _ = _norm_inputs(device, False)
    torch.library.opcheck(torch.ops.fastopt.group_norm_fwd.default, (x.requires_grad_(), None, None, 2, 1e-5, 0))


# BatchNorm: both layouts, a 16-bit dtype (float32 statistics), an odd
# channel count, and the 2-d (N, C) rows case.
def _bn_input(device: str, shape, channels_last: bool, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(shape, device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


BN_CASES = [((2, 5, 3, 4), False), ((2, 5, 3, 4), True), ((6, 7), False)]


@pytest.mark.parametrize("shape,channels_last", BN_CASES, ids=["nchw", "nhwc", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_norm(device, shape, channels_last, dtype):
    x = _bn_input(device, shape, channels_last, dtype)
    C = shape[1]
    w, b = torch.randn(C, device=device), torch.randn(C, device=device)
    ops = torch.ops.fastopt
    torch.library.opcheck(ops.batch_norm_fwd.default, (x.requires_grad_(), w, b, 1e-5))
    y, mean, invstd, _ = ops.batch_norm_fwd(x.detach(), w, b, 1e-5)
    dy = torch.randn_like(y)
    torch.library.opcheck(ops.batch_norm_bwd.default, (dy, x.detach(), mean, invstd, w))
    torch.library.opcheck(ops.batch_norm_stats.default, (x.detach(),))
    torch.library.opcheck(ops.batch_norm_apply.default, (x, mean, invstd, w.requires_grad_(), b.requires_grad_()))
    torch.library.opcheck(ops.batch_norm_bwd_reduce.default, (dy, x.detach(), mean))
    sum_dy, sum_dy_xmu = ops.batch_norm_bwd_reduce(dy, x.detach(), mean)
    count = x.numel() // C
    torch.library.opcheck(
        ops.batch_norm_bwd_elemt.default, (dy, x.detach(), mean, invstd, w.detach(), sum_dy, sum_dy_xmu, count)
    )


def test_batch_norm_no_affine(device):
    x = torch.randn(3, 4, 5, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastopt.batch_norm_fwd.default, (x, None, None, 1e-5))


@pytest.mark.parametrize("buffer_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("which", ["both", "mean only"])
def test_batch_norm_update_stats(device, buffer_dtype, which):
    running_mean = torch.randn(5, device=device, dtype=buffer_dtype)
    running_var = torch.rand(5, device=device, dtype=buffer_dtype) if which == "both" else None
    mean, var = torch.randn(5, device=device), torch.rand(5, device=device)
    torch.library.opcheck(
        torch.ops.fastopt.batch_norm_update_stats_.default, (running_mean, running_var, mean, var, 0.1, 12)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixes CPU and CUDA tensors")
def test_batch_norm_update_stats_refuses_mixed_devices():
    """A CPU running buffer beside a CPU statistic, next to CUDA ones: the
    dispatcher picks the CUDA kernel, which must refuse the pair rather than
    dereference host memory on the device."""
    cuda, cpu = torch.randn(5, device="cuda"), torch.randn(5)
    with pytest.raises(RuntimeError, match="expected running statistics on cuda"):
        torch.ops.fastopt.batch_norm_update_stats_(cuda.clone(), cpu.clone(), cuda.clone(), cpu.clone().abs(), 0.1, 8)


@pytest.mark.parametrize("buffer_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("which", ["both", "var only"])
def test_batch_norm_fwd_updates_running_stats(device, buffer_dtype, which):
    """batch_norm_fwd's in-place update of the running estimates: schema, fake
    kernel and autograd registration (opcheck), and the values, which must be
    those of batch_norm_update_stats_ with the batch's statistics."""
    x = torch.randn(4, 5, 3, device=device)
    w, b = torch.randn(5, device=device), torch.randn(5, device=device)
    running_mean = torch.randn(5, device=device, dtype=buffer_dtype) if which == "both" else None
    running_var = torch.rand(5, device=device, dtype=buffer_dtype)
    ops = torch.ops.fastopt
    torch.library.opcheck(
        ops.batch_norm_fwd.default,
        (x.clone().requires_grad_(), w, b, 1e-5, None if running_mean is None else running_mean.clone(),
         running_var.clone(), 0.3),
    )  # fmt: skip
    expected_mean = None if running_mean is None else running_mean.clone()
    expected_var = running_var.clone()
    _, mean, _, var = ops.batch_norm_fwd(x, w, b, 1e-5)
    ops.batch_norm_update_stats_(expected_mean, expected_var, mean, var, 0.3, 12)
    version = running_var._version
    ops.batch_norm_fwd(x.requires_grad_(), w, b, 1e-5, running_mean, running_var, 0.3)
    assert running_var._version > version  # autograd sees the buffer as modified
    torch.testing.assert_close(running_var, expected_var, rtol=0, atol=0)
    if running_mean is not None:
        torch.testing.assert_close(running_mean, expected_mean, rtol=0, atol=0)


def test_batch_norm_eval_composite(device):
    """batch_norm_eval is batch_norm_apply with invstd formed from running_var + eps."""
    x = torch.randn(3, 4, 5, device=device, dtype=torch.bfloat16, requires_grad=True)
    rm, rv = torch.randn(4, device=device), torch.rand(4, device=device)
    w, b = torch.randn(4, device=device, requires_grad=True), torch.randn(4, device=device)
    ops = torch.ops.fastopt
    torch.library.opcheck(ops.batch_norm_eval.default, (x, rm, rv, w, b, 1e-3))
    expected = ops.batch_norm_apply(x, rm, torch.rsqrt(rv + 1e-3), w, b)
    torch.testing.assert_close(ops.batch_norm_eval(x, rm, rv, w, b, 1e-3), expected, rtol=0, atol=0)
