"""fastopt.nn dropout against its definition and torch's behaviour."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fastopt.nn.functional as F
from fastopt import nn

from ..cpu_isa import cpu_capability, supported_isas
from .tensors import dropout_scaled, streamed_numel

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _kept(y: torch.Tensor) -> torch.Tensor:
    # x is drawn without zeros below, so a zero output means "dropped".
    return y != 0


def _nonzero_randn(*shape: int | tuple, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    size = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
    x = torch.randn(size, device=device).to(dtype)
    return torch.where(x == 0, torch.ones_like(x), x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_and_scale(device, p):
    """Over 2M elements the kept fraction is within 6 std of 1 - p, and survivors are x / (1 - p)."""
    n = 2 * 2**20
    x = _nonzero_randn(n, device=device)
    y = F.dropout(x, p)
    kept = _kept(y)
    std = math.sqrt(p * (1 - p) / n)
    assert abs(kept.double().mean().item() - (1 - p)) < 6 * std
    assert torch.equal(y[kept], dropout_scaled(x[kept], 1 - p))


@pytest.mark.parametrize("dtype", DTYPES)
# 0-dim, not a multiple of a 64-element Philox block, and more than one tile.
@pytest.mark.parametrize("shape", [(), (1,), (1000003,), (37, 129)])
def test_dtypes_and_shapes(device, dtype, shape):
    x = _nonzero_randn(shape, device=device, dtype=dtype)
    y = F.dropout(x, 0.3)
    assert y.shape == x.shape and y.dtype == dtype
    kept = _kept(y)
    expected = dropout_scaled(x, 0.7)
    assert torch.equal(y[kept], expected[kept])


def test_every_isa_draws_the_same_mask():
    """The stream is fixed by NOTE: [dropout stream], not by the instruction set."""
    x = _nonzero_randn(100003, device="cpu")
    masks = []
    for isa in supported_isas():
        with cpu_capability(isa):
            masks.append(_kept(F.dropout(x, 0.4, generator=torch.Generator().manual_seed(3))))
    assert all(torch.equal(masks[0], m) for m in masks[1:])


def test_mask_follows_logical_index(device):
    """A non-contiguous input gets the mask of its contiguous copy."""
    x = _nonzero_randn(64, 33, device=device).t()  # transposed view
    y = F.dropout(x, 0.5, generator=_gen(device, 1))
    y_ref = F.dropout(x.contiguous(), 0.5, generator=_gen(device, 1))
    assert torch.equal(y, y_ref)


def _permuted_storage(x: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``x``'s values, stored with dims in ``order`` (outermost first): a dense, non-contiguous tensor."""
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return x.permute(order).contiguous().permute(inverse)


# (shape, relayout): dense non-contiguous inputs, whose result torch gives in their strides.
DENSE_LAYOUTS = {
    "channels_last": ((2, 3, 4, 5), lambda x: x.contiguous(memory_format=torch.channels_last)),
    "channels_last_3d": ((2, 3, 2, 4, 5), lambda x: x.contiguous(memory_format=torch.channels_last_3d)),
    "batch_innermost": ((2, 3, 4, 5), lambda x: _permuted_storage(x, (1, 2, 3, 0))),
    "transposed_3d": ((4, 3, 5), lambda x: _permuted_storage(x, (2, 1, 0))),
    "channels_innermost_1d": ((2, 3, 5), lambda x: _permuted_storage(x, (0, 2, 1))),
}


@pytest.mark.parametrize(("shape", "relayout"), DENSE_LAYOUTS.values(), ids=list(DENSE_LAYOUTS))
@pytest.mark.parametrize(
    "call",
    [
        lambda x, g: F.dropout(x, 0.5, generator=g),
        lambda x, g: F.dropout(x, 0.5, generator=g, mask="bits"),
        lambda x, g: {3: F.dropout1d, 4: F.dropout2d, 5: F.dropout3d}[x.dim()](x, 0.5, generator=g),
        lambda x, g: F.dropout_add(x, x.flip(0), 0.5, generator=g),
    ],
    ids=["dropout", "bits", "channel-wise", "dropout_add"],
)
def test_dense_input_keeps_its_strides(device, shape, relayout, call):
    """As torch's dropout (NOTE: [dropout memory format]): the contiguous input's values, in the input's strides."""
    x = _nonzero_randn(*shape, device=device)
    leaf, leaf_ref = relayout(x).requires_grad_(), x.clone().requires_grad_()
    assert not leaf.is_contiguous()
    y, y_ref = call(leaf, _gen(device, 2)), call(leaf_ref, _gen(device, 2))
    assert y.stride() == leaf.stride()
    assert torch.equal(y, y_ref)
    # A gradient in those strides: dx keeps them too, with the same mask.
    y.backward(torch.ones_like(y))
    y_ref.backward(torch.ones_like(y_ref))
    assert leaf.grad.stride() == leaf.stride()
    assert torch.equal(leaf.grad, leaf_ref.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 70, 9, 11), (2, 300, 5, 4), (4, 16, 40, 33)])
def test_channels_last_channelwise_matches_contiguous(device, dtype, shape):
    """dropout2d of a channels-last input draws its contiguous copy's mask, out of place and in place.

    On the CPU it runs in the input's memory (NOTE: [dropout memory format]):
    70, 300 and 16 channels per row, against Philox blocks of 128 mask indices.
    """
    x = _nonzero_randn(*shape, device=device, dtype=dtype)
    x_last = x.contiguous(memory_format=torch.channels_last)
    ref = F.dropout2d(x, 0.4, generator=_gen(device, 5))
    y = F.dropout2d(x_last, 0.4, generator=_gen(device, 5))
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, ref)
    if device == "cpu":
        # Natively: no copy to the contiguous order and back.
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            F.dropout2d(x_last, 0.4, generator=_gen(device, 5))
        assert not {e.name for e in prof.events()} & {"aten::contiguous", "aten::clone", "aten::copy_"}
    assert F.dropout2d(x_last, 0.4, inplace=True, generator=_gen(device, 5)) is x_last
    assert torch.equal(x_last, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_channels_last_channelwise_output_is_streamed_alike(device, dtype):
    """A channels-last dropout2d output large enough for the CPU's non-temporal stores equals the in-place one."""
    channels, width = 96, 37
    height = -(-streamed_numel(dtype) // (channels * width * 2))
    x = torch.randn(2, channels, height, width, device=device, dtype=dtype)
    x_last = x.contiguous(memory_format=torch.channels_last)
    y = F.dropout2d(x_last, 0.3, generator=_gen(device, 8))
    assert torch.equal(y, F.dropout2d(x_last.clone(), 0.3, inplace=True, generator=_gen(device, 8)))
    assert torch.equal(y, F.dropout2d(x, 0.3, generator=_gen(device, 8)))


def _gen(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def test_reproducibility(device):
    x = _nonzero_randn(10000, device=device)
    torch.manual_seed(5)
    a, b = F.dropout(x, 0.5), F.dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(F.dropout(x, 0.5), a)
    assert not torch.equal(a, b)  # consecutive calls differ
    # A passed generator is honoured, and the default generator is left alone.
    state = torch.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    c = F.dropout(x, 0.5, generator=_gen(device, 9))
    assert torch.equal(c, F.dropout(x, 0.5, generator=_gen(device, 9)))
    assert not torch.equal(c, F.dropout(x, 0.5, generator=_gen(device, 10)))
    now = torch.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    assert torch.equal(state, now)


def test_backward_mask_equals_forward_mask(device):
    x = _nonzero_randn(5000, device=device).requires_grad_()
    y = F.dropout(x, 0.4)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(grad != 0, _kept(y))
    assert torch.equal(grad[grad != 0], torch.full_like(grad, 1 / 0.6)[grad != 0])


def test_gradcheck(device):
    x = torch.randn(3, 70, device=device, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor([11, 12], device=device)
    torch.autograd.gradcheck(lambda t: torch.ops.fastopt.dropout(t, seed, 0.3), (x,))
    res = torch.randn(3, 70, device=device, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(70, device=device, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, r, b: torch.ops.fastopt.dropout_add(a, r, b, seed, 0.3), (x, res, bias))


def test_eval_p0_p1(device):
    x = torch.randn(100, device=device)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    assert torch.equal(F.dropout(x, 1.0), torch.zeros_like(x))
    m = nn.Dropout(0.5).eval()
    assert m(x) is x
    with pytest.raises(ValueError):
        nn.Dropout(1.5)
    with pytest.raises(ValueError):
        F.dropout(x, -0.1)


def _outcome(fn):
    """fn()'s result or exception, and the texts of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - compared with torch's below
            result = e
    return result, [str(w.message) for w in caught]


def _assert_same_outcome(ours, ref):
    (result, warned), (ref_result, ref_warned) = ours, ref
    assert warned == ref_warned
    if isinstance(ref_result, Exception):
        assert type(result) is type(ref_result) and str(result) == str(ref_result)
    else:
        torch.testing.assert_close(result, ref_result, equal_nan=True)


@pytest.mark.parametrize("training", [True, False])
def test_nan_p_raises_like_torch(device, training):
    """A NaN passes torch's Python range check and fails ATen's: a RuntimeError, in eval too."""
    x = torch.randn(4, 3, 5, device=device)
    nan = float("nan")
    for name in ("dropout", "dropout1d", "dropout2d", "dropout3d"):
        _assert_same_outcome(
            _outcome(lambda: getattr(F, name)(x, nan, training)),
            _outcome(lambda: getattr(torch.nn.functional, name)(x, nan, training)),
        )
    ours, ref = nn.Dropout(nan).train(training), torch.nn.Dropout(nan).train(training)
    _assert_same_outcome(_outcome(lambda: ours(x)), _outcome(lambda: ref(x)))
    with pytest.raises(RuntimeError, match="between 0 and 1, but got nan"):
        F.dropout_add(x, x, nan, training)


# dropout3d with p = 0.5 is left out: torch takes a 1-D input as an unbatched
# (C, L) one there and draws a random mask.
@pytest.mark.parametrize(
    "name,p", [(name, p) for name in ("dropout1d", "dropout2d", "dropout3d") for p in (0.0, 1.0)]
    + [("dropout1d", 0.5), ("dropout2d", 0.5)],
)
def test_channelwise_1d_input_like_torch(device, name, p):
    """ATen checks feature dropout's input rank only when it draws a mask: with p = 0 or 1,
    dropout2d of a 1-D input returns the input or input * 0 (after torch's warning)."""
    x = torch.tensor([1.0, -2.0, float("nan"), 0.5], device=device)
    _assert_same_outcome(
        _outcome(lambda: getattr(F, name)(x, p)), _outcome(lambda: getattr(torch.nn.functional, name)(x, p))
    )


def test_inplace(device):
    x = _nonzero_randn(1000, device=device)
    ref = F.dropout(x, 0.5, generator=_gen(device, 2))
    out = F.dropout(x, 0.5, inplace=True, generator=_gen(device, 2))
    assert out is x and torch.equal(x, ref)
    # Non-contiguous, and with autograd (through a non-leaf).
    leaf = _nonzero_randn(40, 30, device=device).requires_grad_()
    y = leaf * 1
    ref = F.dropout(y.t(), 0.5, generator=_gen(device, 4))
    F.dropout(y.t(), 0.5, inplace=True, generator=_gen(device, 4))
    assert torch.equal(y.t(), ref)
    y.sum().backward()
    assert torch.equal(leaf.grad != 0, y != 0)


def test_saved_tensors_hold_no_mask(device):
    """Autograd saves the 2-word seed, nothing per element."""
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    x = torch.randn(4096, device=device, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = F.dropout(x, 0.5)
    assert saved and all(t.numel() == 2 for t in saved)
    y.sum().backward()


@pytest.mark.parametrize("cls", [nn.Dropout1d, nn.Dropout2d, nn.Dropout3d])
def test_channelwise(device, cls):
    dims = {nn.Dropout1d: (9,), nn.Dropout2d: (5, 7), nn.Dropout3d: (3, 4, 5)}[cls]
    x = _nonzero_randn(8, 16, *dims, device=device)
    m = cls(0.5)
    assert isinstance(m, cls.__mro__[1]) and repr(m) == repr(cls.__mro__[1](0.5))
    y = m(x)
    kept = _kept(y).flatten(2)
    # Every channel is all kept or all dropped, and both happen.
    assert torch.equal(kept.all(-1), kept.any(-1))
    assert 0 < kept.all(-1).sum() < 8 * 16
    assert torch.equal(y[_kept(y)], x[_kept(y)] / 0.5)


def test_dropout1d_unbatched(device):
    x = _nonzero_randn(16, 9, device=device)
    y = F.dropout1d(x, 0.5)
    assert y.shape == x.shape
    kept = _kept(y)
    assert torch.equal(kept.all(-1), kept.any(-1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_dropout_add_matches_composition(device, dtype, with_bias):
    x = _nonzero_randn(33, 70, device=device, dtype=dtype)
    residual = torch.randn(33, 70, device=device).to(dtype)
    bias = torch.randn(70, device=device).to(dtype) if with_bias else None
    y = F.dropout_add(x, residual, 0.3, bias=bias, generator=_gen(device, 7))
    # The same seed draws the same words for the unfused dropout.
    seed = torch.randint(2**62, (2,), device=device, dtype=torch.int64, generator=_gen(device, 7))
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    pre = x.to(wide) + (bias.to(wide) if with_bias else 0)
    ref = (torch.ops.fastopt.dropout(pre, seed, 0.3) + residual.to(wide)).to(dtype)
    torch.testing.assert_close(y, ref, atol=0, rtol=0)


def test_dropout_add_backward(device):
    x = torch.randn(6, 70, device=device, requires_grad=True)
    res = torch.randn(6, 70, device=device, requires_grad=True)
    bias = torch.randn(70, device=device, requires_grad=True)
    y = F.dropout_add(x, res, 0.5, bias=bias)
    g = torch.randn_like(y)
    y.backward(g)
    kept = (y - res) != 0
    torch.testing.assert_close(x.grad, torch.where(kept, g / 0.5, 0))
    torch.testing.assert_close(res.grad, g)
    torch.testing.assert_close(bias.grad, x.grad.sum(0))
    # Eval and p=0 are the plain sum.
    torch.testing.assert_close(F.dropout_add(x, res, 0.5, training=False, bias=bias), x + bias + res)


def test_bad_input(device):
    x = torch.randn(10, device=device)
    seed = torch.tensor([1, 2], device=device)
    # torch's exception type for an integer tensor.
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.fastopt.dropout(x.int(), seed, 0.5)
    # torch's NotImplementedError where its sampling has no kernel for the dtype.
    with pytest.raises(NotImplementedError, match="float32"):
        torch.ops.fastopt.dropout(x.to(torch.complex64), seed, 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        torch.ops.fastopt.dropout(x, seed, 1.5)
    with pytest.raises(RuntimeError, match="2 words"):
        torch.ops.fastopt.dropout(x, seed[:1], 0.5)
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.fastopt.dropout_add(x, x, torch.randn(3, device=device), seed, 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_large_outputs_written_with_streaming_stores_match_in_place(device, dtype):
    """Outputs this large take the CPU's non-temporal store path (tensors.streamed_numel); in place does not."""
    n = streamed_numel(dtype) // 16 * 16 + 3  # with a scalar tail
    x = torch.randn(n, device=device).to(dtype)
    gen = torch.Generator(device=device)
    y = F.dropout(x, 0.3, generator=gen.manual_seed(7))
    y_in_place = F.dropout(x.clone(), 0.3, inplace=True, generator=gen.manual_seed(7))
    assert torch.equal(y, y_in_place)
    # dropout_add with a bias whose length cuts the runs at unaligned offsets,
    # against the composition as test_dropout_add_matches_composition builds it.
    rows = x[: 1000 * (n // 1000)].view(-1, 1000)
    bias, residual = torch.randn(1000, device=device).to(dtype), torch.randn_like(rows)
    out = F.dropout_add(rows, residual, 0.3, bias=bias, generator=gen.manual_seed(3))
    seed = torch.randint(2**62, (2,), device=device, dtype=torch.int64, generator=gen.manual_seed(3))
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    expected = torch.ops.fastopt.dropout(rows.to(wide) + bias.to(wide), seed, 0.3) + residual.to(wide)
    torch.testing.assert_close(out, expected.to(dtype), atol=0, rtol=0)
