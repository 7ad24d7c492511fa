"""Shapes that reach distinct CUDA kernel paths, against torch on every device.

Each case names the CUDA path it is for (csrc/cuda/kernels/*.cu); on the CPU
the same shapes exercise the CPU kernels' odd sizes, under each CPU kernel
variant. The cases:

* a misaligned start (tensors.unaligned): BatchNorm's affine kernel, the
  group-norm row, column and run kernels and dropout fall back from 16-byte
  vectors to element access. Sizes are chosen so that the start is the only
  reason for it (S, C and row lengths multiples of every vector width).
* BatchNorm channels first with C > 65535: more channels than gridDim.y, so a
  reduction block loops over channels 65535 apart.
* LayerNorm at the row kernels' limits (8192 elements per row for 16- and
  32-bit types, 4096 for float64: one past it takes the general path), and
  more rows than the row grid covers in one pass.
* GroupNorm channels last with small C and a spatial size that is not a
  multiple of the 16-row chunks of the column kernels.
* dropout's 1-bit mask with a partial last 64-element Philox block, and
  channel-wise dropout with 2 and 3 elements per channel (the group kernel's
  tiles, whose channels straddle tile boundaries when 3 does not divide them).
* InstanceNorm2d with many channels, channels last, small spatial size.

A last group is the CPU's own: outputs large enough for the CPU kernels'
non-temporal stores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastopt.nn
import fastopt.nn.functional as FF

from .tensors import (
    assert_within_twice_torch_error,
    channel_blocked_batch_norm_shape,
    dropout_scaled,
    streamed_numel,
    unaligned,
)

# Every test under each compiled CPU kernel variant (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_cpu_isa")


def _leaf(t: torch.Tensor, misaligned: bool) -> torch.Tensor:
    """An autograd leaf with t's values and strides: misaligned (made so itself, not cloned) or a fresh clone."""
    out = unaligned(t) if misaligned else t.detach().clone()
    return out.requires_grad_()


def _gen(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _nonzero_randn(*shape: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values with no zeros, so that a zero after dropout means "dropped"."""
    x = torch.randn(shape, device=device).to(dtype)
    return torch.where(x == 0, torch.ones_like(x), x)


def _assert_all_close(got: dict, ref: dict, **tol) -> None:
    assert got.keys() == ref.keys()
    for name, value in ref.items():
        torch.testing.assert_close(got[name], value, msg=lambda m, name=name: f"{name}: {m}", **tol)


# Weight and bias gradients summed over many float32 terms (4100 rows; the
# N * H * W positions of a channel): torch's own result is then off the
# float64 value by more than assert_close's default float32 tolerance
# (measured on the CPU: up to 7e-5 for LayerNorm's 4100 rows, whose sums
# reach 90; 2e-5 for GroupNorm's 126 positions, sums up to 30), and fastopt's,
# summed in another order, differs from torch's by as much (a dweight of 4
# 2e-5 apart: 5 times the default rtol), while being as close to float64.
# These are judged as in test_batch_norm.py: against float64, at most twice
# torch's own error plus a few float32 rounding units of the quantity's scale.
SUMMED = ("dweight", "dbias")


def _assert_matches_torch(got: dict, torch_got: dict, exact: dict) -> None:
    """SUMMED entries against the float64 `exact`; everything else equal to torch's within the defaults."""
    unsummed = [k for k in torch_got if k not in SUMMED]
    _assert_all_close({k: got[k] for k in unsummed}, {k: torch_got[k] for k in unsummed})
    for name in SUMMED:
        assert_within_twice_torch_error(name, got[name], torch_got[name], exact[name])


# ---------------------------------------------------------------- BatchNorm


def _bn_pair(cls_ours, cls_ref, C: int, device: str, dtype=torch.float32):
    ref = cls_ref(C).to(device=device, dtype=dtype)
    with torch.no_grad():  # non-trivial parameters and running statistics
        ref.weight.copy_(torch.randn(C) * 0.5 + 1)
        ref.bias.copy_(torch.randn(C))
        ref.running_mean.copy_(torch.randn(C))
        ref.running_var.copy_(torch.rand(C) + 0.5)
    ours = cls_ours(C).to(device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _bn_results(module, x_leaf, grad) -> dict:
    y = module(x_leaf)
    y.backward(grad)
    out = {"y": y.detach(), "dx": x_leaf.grad, "dweight": module.weight.grad, "dbias": module.bias.grad}
    out.update(dict(module.named_buffers()))
    return out


# (module pair, shape, memory format): S and C multiples of 4 floats, so that
# only the misaligned start sends the affine kernel to element access.
BN_UNALIGNED = {
    "rows_(N,C)": (1, (6, 8), torch.contiguous_format),
    "channels_first": (2, (3, 8, 4, 4), torch.contiguous_format),
    "channels_last": (2, (3, 8, 4, 4), torch.channels_last),
}
BN_MODULES = {1: (fastopt.nn.BatchNorm1d, torch.nn.BatchNorm1d), 2: (fastopt.nn.BatchNorm2d, torch.nn.BatchNorm2d)}


@pytest.mark.parametrize("case", BN_UNALIGNED)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_unaligned(device, case, training):
    dims, shape, fmt = BN_UNALIGNED[case]
    ours, ref = _bn_pair(*BN_MODULES[dims], shape[1], device)
    ours.train(training)
    ref.train(training)
    x = (torch.randn(shape, device=device) * 2 + 3).contiguous(memory_format=fmt)
    grad = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    got = _bn_results(ours, _leaf(x, True), unaligned(grad))
    want = _bn_results(ref, _leaf(x, False), grad)
    _assert_all_close(got, want)
    if fmt == torch.channels_last:
        assert got["y"].is_contiguous(memory_format=fmt) and got["dx"].is_contiguous(memory_format=fmt)


def test_batch_norm_more_channels_than_grid_y(device):
    """Channels first, C = 70000 > 65535: blocks of the reduction take a second channel 65535 on."""
    C = 70000
    ours, ref = _bn_pair(fastopt.nn.BatchNorm1d, torch.nn.BatchNorm1d, C, device)
    x = torch.randn(2, C, 3, device=device) * 2 + 3
    grad = torch.randn(2, C, 3, device=device)
    got = _bn_results(ours, _leaf(x, False), grad)
    want = _bn_results(ref, _leaf(x, False), grad)
    _assert_all_close(got, want)
    # The channels past 65535 were reduced as well as the first ones.
    assert not torch.equal(got["running_mean"][65535:], torch.zeros(C - 65535, device=device))
    # Evaluation with the updated estimates.
    ours.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


# ---------------------------------------------------------------- GroupNorm / LayerNorm


def _norm_results(fn, x_leaf, w, b, grad) -> dict:
    """fn(x, w, b)'s output and the gradients of x, w and b (w and b become fresh leaves)."""
    w, b = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    y = fn(x_leaf, w, b)
    y.backward(grad)
    return {"y": y.detach(), "dx": x_leaf.grad, "dweight": w.grad, "dbias": b.grad}


@pytest.mark.parametrize("channels_last", [False, True], ids=["channels_first", "channels_last"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_group_norm_unaligned(device, channels_last, activation):
    """C = 8 and S = 16: the run and column kernels would take 16-byte vectors but for the start."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (2, 8, 4, 4)
    x = (torch.randn(shape, device=device) * 2 + 3).contiguous(memory_format=fmt)
    grad = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    w, b = torch.randn(8, device=device), torch.randn(8, device=device)
    act = {None: lambda y: y, "silu": F.silu}[activation]
    fn = lambda x, w, b: FF.group_norm(x, 2, w, b, 1e-5, activation)
    got = _norm_results(fn, _leaf(x, True), w, b, unaligned(grad))
    want = _norm_results(lambda x, w, b: act(F.group_norm(x, 2, w, b, 1e-5)), _leaf(x, False), w, b, grad)
    _assert_all_close(got, want)
    assert got["y"].is_contiguous(memory_format=fmt) and got["dx"].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("shape", [(6, 24), (2, 3, 24), (5, 1000)])
def test_layer_norm_unaligned(device, shape):
    """Rows of multiples of 4 floats: the row kernels would take 16-byte vectors but for the start."""
    C = shape[-1]
    x = torch.randn(shape, device=device) * 3 + 2
    grad = torch.randn(shape, device=device)
    w, b = torch.randn(C, device=device), torch.randn(C, device=device)
    got = _norm_results(lambda x, w, b: FF.layer_norm(x, (C,), w, b), _leaf(x, True), w, b, unaligned(grad))
    want = _norm_results(lambda x, w, b: F.layer_norm(x, (C,), w, b), _leaf(x, False), w, b, grad)
    _assert_all_close(got, want)


# The 16-bit rows at the limit, 8192 and 8193, are in test_layer_norm.py's
# test_low_precision_within_twice_torch_error.


@pytest.mark.parametrize("C", [4096, 4097])
def test_layer_norm_row_limit_float64(device, C):
    """4096 is float64's longest row for the row kernels (8 per thread); 4097 takes the general path."""
    x = torch.randn(5, C, dtype=torch.float64, device=device) * 3 + 2
    grad = torch.randn_like(x)
    w, b = torch.randn_like(x[0]), torch.randn_like(x[0])
    got = _norm_results(lambda x, w, b: FF.layer_norm(x, (C,), w, b), _leaf(x, False), w, b, grad)
    want = _norm_results(lambda x, w, b: F.layer_norm(x, (C,), w, b), _leaf(x, False), w, b, grad)
    _assert_all_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_norm_more_rows_than_one_grid_pass(device, dtype):
    """4100 rows of 8: 513 blocks of 8 warp-teams wanted, 512 launched, so the grid-stride loop runs twice."""
    x = torch.randn(4100, 8, dtype=dtype, device=device) * 3 + 2
    grad = torch.randn_like(x)
    w, b = torch.randn_like(x[0]), torch.randn_like(x[0])
    fn, torch_fn = (lambda x, w, b: FF.layer_norm(x, (8,), w, b)), (lambda x, w, b: F.layer_norm(x, (8,), w, b))
    got = _norm_results(fn, _leaf(x, False), w, b, grad)
    want = _norm_results(torch_fn, _leaf(x, False), w, b, grad)
    if dtype == torch.float64:
        _assert_all_close(got, want)
    else:  # dweight and dbias sum 4100 rows: see SUMMED
        exact = _norm_results(torch_fn, _leaf(x.double(), False), w.double(), b.double(), grad.double())
        _assert_matches_torch(got, want, exact)


# (C, groups): one channel; three channels, one each (odd C); 24 channels in 6
# groups. With C = 1 the channels-last strides are also contiguous ones, so
# that case runs the channels-first (run) kernels on planes of 15 and 63.
SMALL_C = [(1, 1), (3, 3), (24, 6)]


@pytest.mark.parametrize("C,groups", SMALL_C, ids=[f"C{c}_G{g}" for c, g in SMALL_C])
@pytest.mark.parametrize("spatial", [(5, 3), (9, 7)], ids=["5x3", "9x7"])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_group_norm_channels_last_small_c(device, C, groups, spatial, activation):
    """Channels last, C below a warp, and 15 or 63 positions: a short last 16-row chunk of the column kernels."""
    shape = (2, C, *spatial)
    x = (torch.randn(shape, device=device) * 2 + 3).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C, device=device), torch.randn(C, device=device)
    act = {None: lambda y: y, "relu": F.relu}[activation]
    torch_fn = lambda x, w, b: act(F.group_norm(x, groups, w, b, 1e-5))
    got = _norm_results(lambda x, w, b: FF.group_norm(x, groups, w, b, 1e-5, activation), _leaf(x, False), w, b, grad)
    want = _norm_results(torch_fn, _leaf(x, False), w, b, grad)
    # dweight and dbias sum N * H * W terms: see SUMMED
    exact = _norm_results(torch_fn, _leaf(x.double(), False), w.double(), b.double(), grad.double())
    _assert_matches_torch(got, want, exact)
    assert got["y"].is_contiguous(memory_format=torch.channels_last)
    assert got["dx"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_many_channels_channels_last(device, affine):
    """1024 channels of 4x4, channels last: the column kernels with as many groups as channels."""
    shape = (2, 1024, 4, 4)
    kw = {"affine": affine, "track_running_stats": True}
    ours = fastopt.nn.InstanceNorm2d(1024, **kw).to(device)
    ref = torch.nn.InstanceNorm2d(1024, **kw).to(device)
    if affine:
        with torch.no_grad():
            ref.weight.normal_()
            ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    for _ in range(2):  # the second step starts from updated estimates
        x = (torch.randn(shape, device=device) * 2 + 1).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
        results = []
        for m in (ours, ref):
            m.zero_grad()
            leaf = _leaf(x, False)
            y = m(leaf)
            y.backward(grad)
            results.append({"y": y.detach(), "dx": leaf.grad, **{n: p.grad for n, p in m.named_parameters()}})
        _assert_all_close(*results)
        assert results[0]["y"].is_contiguous(memory_format=torch.channels_last)
        _assert_all_close(dict(ours.named_buffers()), dict(ref.named_buffers()))
    ours.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


# ---------------------------------------------------------------- dropout


def _assert_dropout_of(y: torch.Tensor, x: torch.Tensor, p: float) -> torch.Tensor:
    """y is x * mask / (1 - p) for the mask read from y (x has no zeros); returns the mask."""
    kept = y != 0
    assert torch.equal(y[kept], dropout_scaled(x[kept], 1 - p))
    assert kept.any() and not kept.all(), "a mask with both outcomes"
    return kept


def _assert_backward_applies(dx: torch.Tensor, grad: torch.Tensor, kept: torch.Tensor, p: float) -> None:
    """dx is grad * mask / (1 - p) with the forward's mask."""
    assert torch.equal(dx, torch.where(kept, dropout_scaled(grad, 1 - p), torch.zeros_like(grad)))


DROPOUT_CALLS = {
    "recompute": lambda x, g: FF.dropout(x, 0.4, generator=g),
    "bits": lambda x, g: FF.dropout(x, 0.4, generator=g, mask="bits"),
    "dropout1d_group3": lambda x, g: FF.dropout1d(x.view(-1, 7, 3), 0.4, generator=g).view(x.shape),
}


@pytest.mark.parametrize("call", DROPOUT_CALLS)
def test_dropout_unaligned(device, call):
    """A misaligned input and gradient give the aligned one's mask and values, forward and backward."""
    fn = DROPOUT_CALLS[call]
    x = _nonzero_randn(37, 21, device=device)  # 777 elements: a partial last Philox block
    grad = _nonzero_randn(37, 21, device=device)
    results = []
    for misaligned in (True, False):
        leaf = _leaf(x, misaligned)
        y = fn(leaf, _gen(device, 5))
        y.backward(unaligned(grad) if misaligned else grad)
        results.append((y.detach(), leaf.grad))
    (y, dx), (y_ref, dx_ref) = results
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)
    kept = _assert_dropout_of(y, x, 0.4)
    _assert_backward_applies(dx, grad, kept, 0.4)
    if call == "dropout1d_group3":
        channels = kept.view(-1, 3)
        assert torch.equal(channels.all(-1), channels.any(-1))


def _unpack_bits(bits: torch.Tensor, n: int) -> torch.Tensor:
    """Bit i % 8 of byte i // 8, as a bool tensor of n elements (the documented layout)."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    return ((bits.unsqueeze(1) >> shifts) & 1).flatten()[:n].bool()


@pytest.mark.parametrize("n", [63, 65, 1000])
def test_dropout_bits_partial_philox_block(device, n):
    """numel not a multiple of 64: the last Philox block is partial, and so is its byte run of the mask.

    The saved bits are the forward's mask, backward applies exactly that
    mask, and the recompute mode draws the same one from the same generator.
    """
    p = 0.5
    x = _nonzero_randn(n, device=device)
    grad = _nonzero_randn(n, device=device)
    leaf = _leaf(x, False)
    y = FF.dropout(leaf, p, generator=_gen(device, 9), mask="bits")
    y.backward(grad)
    kept = _assert_dropout_of(y.detach(), x, p)
    _assert_backward_applies(leaf.grad, grad, kept, p)
    assert torch.equal(FF.dropout(x, p, generator=_gen(device, 9)), y.detach())
    # The op's own bits, from the seed the functional drew.
    seed = torch.randint(2**62, (2,), device=device, dtype=torch.int64, generator=_gen(device, 9))
    y_op, bits = torch.ops.fastopt.dropout_bits(x, seed, p)
    assert torch.equal(y_op, y.detach())
    assert bits.dtype == torch.uint8 and bits.numel() == (n + 63) // 64 * 8
    assert torch.equal(_unpack_bits(bits, n), kept)
    assert torch.equal(torch.ops.fastopt.dropout_from_bits(grad, bits, p), leaf.grad)


# (function, shape, elements per channel): 2 and 3 per channel, in one group
# tile and over several (1024 elements each; 3 does not divide 1024, so
# channels straddle tile boundaries).
CHANNEL_WISE = {
    "dropout1d_(4,5,2)": (FF.dropout1d, (4, 5, 2)),
    "dropout1d_(4,5,3)": (FF.dropout1d, (4, 5, 3)),
    "dropout2d_(2,3,1,2)": (FF.dropout2d, (2, 3, 1, 2)),
    "dropout1d_(8,700,2)": (FF.dropout1d, (8, 700, 2)),
    "dropout1d_(8,700,3)": (FF.dropout1d, (8, 700, 3)),
    "dropout2d_(4,300,3,1)": (FF.dropout2d, (4, 300, 3, 1)),
}


@pytest.mark.parametrize("case", CHANNEL_WISE)
def test_channel_wise_small_channels(device, case):
    fn, shape = CHANNEL_WISE[case]
    p = 0.5
    x = _nonzero_randn(*shape, device=device)
    grad = _nonzero_randn(*shape, device=device)
    leaf = _leaf(x, False)
    y = fn(leaf, p, generator=_gen(device, 3))
    y.backward(grad)
    kept = _assert_dropout_of(y.detach(), x, p)
    # Whole channels are kept or zeroed together.
    per_channel = kept.flatten(2)
    assert torch.equal(per_channel.all(-1), per_channel.any(-1))
    _assert_backward_applies(leaf.grad, grad, kept, p)
    # The same generator state gives the same channels again.
    assert torch.equal(fn(x, p, generator=_gen(device, 3)), y.detach())


# ---------------------------------------------------------------- streamed stores (CPU)
# Inputs just past the CPU's threshold for non-temporal stores (tensors.
# streamed_numel), with runs (planes, rows) of odd length so that the
# streaming loop's scalar head and tail are both reached. (GroupNorm's and
# dropout's streamed outputs are tested in their own files.)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_batch_norm_channel_blocks(device, dtype):
    """Channels-first training past the L3 cache, where the CPU ops reduce and map
    a block of channels at a time (tensors.channel_blocked_batch_norm_shape):
    forward, backward and running statistics as torch's. float64 equals torch
    within assert_close's defaults; float32 and bfloat16 are judged against a
    float64 run (at most twice torch's own error there plus a few rounding units:
    torch's bfloat16 CPU kernel is the less exact one here, y off by 0.04
    where fastopt's is 0.016)."""
    N, C, L = channel_blocked_batch_norm_shape(dtype)
    ours, ref = _bn_pair(fastopt.nn.BatchNorm1d, torch.nn.BatchNorm1d, C, device, dtype)
    exact_model = torch.nn.BatchNorm1d(C).to(device, torch.float64)
    exact_model.load_state_dict(ref.state_dict())
    # Channel means far from zero, each its own, so that a channel's sums
    # mixed up with another's (or with its block's) would show.
    shift = torch.arange(C, device=device, dtype=torch.float64).mul(0.01).add(3).view(1, C, 1)
    x = (torch.randn(N, C, L, device=device, dtype=torch.float64) * 2 + shift).to(dtype)
    grad = torch.randn(N, C, L, device=device, dtype=dtype)
    got = _bn_results(ours, _leaf(x, False), grad)
    want = _bn_results(ref, _leaf(x, False), grad)
    if dtype == torch.float64:
        _assert_all_close(got, want)
        return
    exact = _bn_results(exact_model, _leaf(x.double(), False), grad.double())
    assert torch.equal(got.pop("num_batches_tracked"), want.pop("num_batches_tracked"))
    for name, value in got.items():
        assert_within_twice_torch_error(name, value, want[name], exact[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_streamed(device, dtype, fmt, training):
    N, C = 2, 37
    L = -(-streamed_numel(dtype) // (N * C)) | 1
    ours, ref = _bn_pair(fastopt.nn.BatchNorm1d, torch.nn.BatchNorm1d, C, device, dtype)
    ours.train(training)
    ref.train(training)

    def shaped(t: torch.Tensor) -> torch.Tensor:  # channels last: (N, L, C) memory viewed as (N, C, L)
        return t if fmt == "channels_first" else t.transpose(1, 2).contiguous().transpose(1, 2)

    x = shaped(torch.randn(N, C, L, dtype=dtype, device=device) * 2 + 3)
    grad = shaped(torch.randn(N, C, L, dtype=dtype, device=device))
    got = _bn_results(ours, _leaf(x, False), grad)
    want = _bn_results(ref, _leaf(x, False), grad)
    if dtype == torch.float64:  # float64's sums stay within assert_close's defaults
        _assert_all_close(got, want)
        return
    exact_model = torch.nn.BatchNorm1d(C).to(device, torch.float64).train(training)
    exact_model.load_state_dict(ref.state_dict())
    exact = _bn_results(exact_model, _leaf(x.double(), False), grad.double())
    _assert_matches_torch(got, want, exact)
