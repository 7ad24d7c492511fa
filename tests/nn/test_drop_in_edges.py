"""Edge cases where fastopt.nn must behave exactly as torch.nn: argument checks,
the dtypes of degenerate results, dropout_add's arguments outside the fused
pass, and where warnings point."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import fastopt.nn
import fastopt.nn.dropout
from fastopt.nn import functional as FF

from ..optim.reference import assert_same_error, assert_same_functional_error


def _gen(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _away_from_zero(*shape: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values in [1, 2): x + bias (bias in [0, 1)) is never 0, so a 0 in a result means "dropped"."""
    return (torch.rand(shape, device=device) + 1).to(dtype)


# --- Normalization: dtypes of the per-channel tensors (CPU) -----------------------

_NORM_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
_NORM_CALLS: dict[str, Callable[..., Any]] = {
    "batch_norm train": lambda F, x, w, b, r: F.batch_norm(x, r, None if r is None else r + 1, w, b, True),
    "batch_norm eval": lambda F, x, w, b, r: F.batch_norm(
        x, torch.zeros(4, dtype=x.dtype if r is None else r.dtype), torch.ones(4, dtype=x.dtype if r is None else r.dtype), w, b, False
    ),
    "group_norm": lambda F, x, w, b, r: F.group_norm(x, 2, w, b),
    "layer_norm": lambda F, x, w, b, r: F.layer_norm(x, (3,), None if w is None else w[:3], None if b is None else b[:3]),
    "instance_norm": lambda F, x, w, b, r: F.instance_norm(x, r, None if r is None else r + 1, w, b),
}  # fmt: skip


@pytest.mark.parametrize("call", list(_NORM_CALLS))
def test_norm_param_dtypes_match_torch_on_cpu(call):
    """Every (input, weight, bias, running stats) dtype combination: torch's result dtype or its error.

    torch's CPU norms take per-channel tensors of the input's dtype, or float32
    ones for a 16-bit input, and refuse the rest with RuntimeErrors whose
    wording depends on which tensor comes first; fastopt's kernels could
    compute them all, but a drop-in refuses what torch refuses.
    """
    fn = _NORM_CALLS[call]
    x0 = torch.randn(2, 4, 3, 3)
    for xd in _NORM_DTYPES:
        for wd in [None, *_NORM_DTYPES]:
            for bd in [None, *_NORM_DTYPES]:
                for rd in [None, *_NORM_DTYPES] if "layer" not in call and "group" not in call else [None]:
                    x = x0.to(xd)
                    w = None if wd is None else torch.rand(4, dtype=wd) + 0.5
                    b = None if bd is None else torch.randn(4, dtype=bd)
                    r = None if rd is None else torch.zeros(4, dtype=rd)
                    try:
                        expected = fn(torch.nn.functional, x, w, b, None if r is None else r.clone())
                    except RuntimeError:
                        assert_same_functional_error(fn, x, w, b, None if r is None else r.clone())
                        continue
                    got = fn(FF, x, w, b, None if r is None else r.clone())
                    assert got.dtype == expected.dtype, (xd, wd, bd, rd)


def test_instance_norm_running_stat_dtypes_match_torch_on_cpu():
    """instance_norm with running_mean and running_var of separate dtypes: torch
    checks them only when running_mean has the parameters' dtype, and then
    refuses a running_var of another. Every combination (1700): torch's result
    dtype or its error, word for word."""
    x0 = torch.randn(2, 4, 3)
    optional = [None, *_NORM_DTYPES]
    for xd, wd, bd, md, vd in itertools.product(_NORM_DTYPES, optional, optional, optional, optional):
        if (md is None) != (vd is None):
            continue  # refused by torch's pair check, tested elsewhere

        def call(F, x, wd=wd, bd=bd, md=md, vd=vd):
            per_channel = [None if d is None else torch.ones(4, dtype=d) for d in (md, vd, wd, bd)]
            return F.instance_norm(x, *per_channel)

        x = x0.to(xd)
        try:
            expected = call(torch.nn.functional, x)
        except RuntimeError:
            assert_same_functional_error(call, x)
            continue
        assert call(FF, x).dtype == expected.dtype, (xd, wd, bd, md, vd)


@pytest.mark.parametrize("training", [None, 0, 1, 1.0, "yes", torch.tensor(True)], ids=repr)
@pytest.mark.parametrize("name", ["dropout", "dropout1d", "dropout2d", "dropout3d"])
@pytest.mark.parametrize("inplace", [False, True])
def test_dropout_training_must_be_a_bool(name, training, inplace):
    """torch's argument parser refuses a non-bool ``training`` with a TypeError naming ATen's op."""
    x = torch.randn((2, 3, 4, 4, 4)[: {"dropout": 2, "dropout1d": 3, "dropout2d": 4, "dropout3d": 5}[name]])
    assert_same_functional_error(lambda F, x: getattr(F, name)(x, 0.5, training=training, inplace=inplace), x)


# --- BatchNorm: eps, and the running estimates -----------------------------------


@pytest.mark.parametrize(
    "training,eps",
    [(True, 0.0), (True, -1e-5), (False, -1e-5)],
)
def test_batch_norm_eps_raises_like_torch(device, training, eps):
    """torch refuses eps <= 0 in training and eps < 0 in evaluation, with a ValueError."""
    x = torch.randn(4, 3, device=device)

    def stats() -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh estimates per call: training updates them."""
        return torch.zeros(3, device=device), torch.ones(3, device=device)

    assert_same_functional_error(lambda F: F.batch_norm(x, *stats(), training=training, eps=eps))
    # Before the per-channel size checks: a wrong-size running_mean is not what is reported.
    assert_same_functional_error(
        lambda F: F.batch_norm(x, torch.zeros(2, device=device), None, training=training, eps=eps)
    )
    if training:
        # After the check of the batch size, as in torch: one value per channel is reported first.
        assert_same_functional_error(lambda F: F.batch_norm(x[:1], *stats(), training=True, eps=eps))


def test_batch_norm_eps_zero_in_modules(device):
    """A module with eps=0 fails in training as torch's does, leaving its buffers as they
    were, and evaluates with the running estimates as torch's does (torch 2.13; torch
    2.11 refuses eps = 0 in evaluation too, and so does fastopt with it)."""
    ref = torch.nn.BatchNorm1d(3, eps=0.0).to(device)
    ours = fastopt.nn.BatchNorm1d(3, eps=0.0).to(device)
    x = torch.randn(4, 3, device=device)
    assert_same_error(lambda: ref(x), lambda: ours(x))
    assert torch.equal(ours.running_mean, ref.running_mean) and torch.equal(ours.running_var, ref.running_var)
    with torch.no_grad():
        ref.running_var.uniform_(0.5, 2)
    ours.load_state_dict(ref.state_dict())
    ref.eval()
    ours.eval()
    try:
        want = ref(x)
    except ValueError:
        assert_same_error(lambda: ref(x), lambda: ours(x))
        return
    torch.testing.assert_close(ours(x), want)


@pytest.mark.parametrize("given", ["running_mean", "running_var"])
def test_batch_norm_training_with_one_running_estimate(device, given):
    """torch refuses one estimate without the other in training; fastopt used to update the one given."""
    x = torch.randn(4, 3, device=device)
    stat = torch.full((3,), 0.5, device=device)
    args = (stat, None) if given == "running_mean" else (None, stat)
    assert_same_functional_error(lambda F: F.batch_norm(x, *args, training=True))
    assert torch.equal(stat, torch.full_like(stat, 0.5))  # left alone, as by torch
    # That check comes after the per-channel size checks and autograd's refusal
    # of a differentiable estimate, as in torch.
    bad_weight = torch.ones(2, device=device)
    assert_same_functional_error(lambda F: F.batch_norm(x, *args, bad_weight, training=True))
    differentiable = stat.clone().requires_grad_()
    args = (differentiable, None) if given == "running_mean" else (None, differentiable)
    assert_same_functional_error(lambda F: F.batch_norm(x, *args, training=True))


@pytest.mark.parametrize("running_mean", [None, "ok", "wrong-size"])
@pytest.mark.parametrize("running_var", [None, "ok", "wrong-size"])
def test_batch_norm_evaluation_needs_both_estimates(device, running_mean, running_var):
    """In evaluation each missing estimate is named on its own, in torch's order: running_mean's
    size or absence first, then running_var's, then weight's size."""
    if running_mean == running_var == "ok":
        pytest.skip("nothing to refuse")
    make = {
        None: lambda: None,
        "ok": lambda: torch.ones(3, device=device),
        "wrong-size": lambda: torch.ones(2, device=device),
    }
    x = torch.randn(4, 3, device=device)
    bad_weight = torch.ones(2, device=device)
    for weight in (None, bad_weight):
        assert_same_functional_error(
            lambda F, weight=weight: F.batch_norm(
                x, make[running_mean](), make[running_var](), weight, training=False
            )
        )


def test_backward_through_eval_output_after_training_forward_raises():
    """The running statistics' update counts in their version (README): torch's
    eager BatchNorm does not count it, and differentiates an evaluation output
    with the statistics a later training forward changed; fastopt refuses."""
    for cls in (torch.nn.BatchNorm2d, fastopt.nn.BatchNorm2d):
        bn = cls(3)
        x = torch.randn(4, 3, 2, 2, requires_grad=True)
        y = bn.eval()(x)
        bn.train()(torch.randn(4, 3, 2, 2))
        if cls is torch.nn.BatchNorm2d:
            y.sum().backward()  # the difference documented: torch goes on
            continue
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


# --- GroupNorm and LayerNorm arguments ------------------------------------------------


@pytest.mark.parametrize("num_groups", [-1, -4, 0])
def test_group_norm_non_positive_groups_raise_like_torch(device, num_groups):
    """-1 and -4 get ATen's "greater than 0" RuntimeError (before the weight's check), not the
    divisibility one; 0 fails in torch's Python batch-size check with a ZeroDivisionError."""
    x = torch.randn(2, 4, 3, device=device)
    assert_same_functional_error(lambda F: F.group_norm(x, num_groups))
    assert_same_functional_error(lambda F: F.group_norm(x, num_groups, torch.ones(3, device=device)))


@pytest.mark.parametrize(
    "normalized_shape", [4, True, 4.0, torch.tensor(4), torch.tensor([4]), range(4, 5)],
    ids=lambda v: type(v).__name__,
)
def test_layer_norm_shape_must_be_a_list_or_tuple(device, normalized_shape):
    """torch.nn.functional.layer_norm takes no bare int: its argument parser raises a TypeError naming the type."""
    x = torch.randn(2, 4, device=device)
    assert_same_functional_error(lambda F: F.layer_norm(x, normalized_shape))


def test_layer_norm_module_and_sequences_still_take_their_shapes(device):
    """The module turns an int into a 1-tuple in its constructor; tuple, list and torch.Size pass."""
    x = torch.randn(2, 3, 4, device=device)
    ref = torch.nn.functional.layer_norm(x, (4,))
    torch.testing.assert_close(fastopt.nn.LayerNorm(4).to(device)(x), torch.nn.LayerNorm(4).to(device)(x))
    for shape in ((4,), [4], torch.Size([4])):
        torch.testing.assert_close(FF.layer_norm(x, shape), ref)


# --- dropout_add outside the fused pass ------------------------------------------------


def _seed_words(device: str, seed: int) -> torch.Tensor:
    """The (key, offset) words dropout draws from a generator seeded with ``seed``."""
    return torch.randint(2**62, (2,), device=device, dtype=torch.int64, generator=_gen(device, seed))


def test_dropout_add_fallback_draws_the_fused_mask(device):
    """Arguments the fused op refuses (a residual of another dtype, a bias of another shape
    that broadcasts the same) get the composition, with the mask the fused pass draws from
    the same generator state: in float32 the results are equal bit for bit."""
    x = _away_from_zero(33, 70, device=device)
    bias = torch.rand(70, device=device)
    residual = torch.randn(33, 70, device=device)
    fused = FF.dropout_add(x, residual, 0.3, bias=bias, generator=_gen(device, 7))
    # The claim the fallback rests on: fastopt's dropout op under the same words draws the same mask.
    composed = torch.ops.fastopt.dropout(x + bias, _seed_words(device, 7), 0.3) + residual
    assert torch.equal(fused, composed)
    wider = FF.dropout_add(x, residual.double(), 0.3, bias=bias, generator=_gen(device, 7))
    assert wider.dtype == torch.float64
    assert torch.equal(wider.float(), fused)
    row_bias = FF.dropout_add(x, residual, 0.3, bias=bias[None], generator=_gen(device, 7))
    assert torch.equal(row_bias, fused)
    assert 0 < ((fused - residual) == 0).sum() < x.numel()  # some dropped, some kept


def test_dropout_add_under_autocast(device):
    """The common trigger: a bfloat16 Linear output with a float32 residual stream. The result
    is float32 as torch's composition gives, gradients reach both, and the fused pass's mask
    (with the residual cast to bfloat16) is the same."""
    linear = torch.nn.Linear(64, 64).to(device)
    h = torch.randn(8, 64, device=device, requires_grad=True)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = linear(h)
        assert out.dtype == torch.bfloat16
        y = FF.dropout_add(out, h, 0.1, training=True, generator=_gen(device, 3))
        ref = torch.nn.functional.dropout(out, 0.1) + h
    assert y.dtype == ref.dtype == torch.float32
    expected = FF.dropout(out, 0.1, generator=_gen(device, 3)) + h
    assert torch.equal(y, expected)
    # The all-bfloat16 fused pass draws the same mask. A zero residual keeps the
    # survivors exact: next to a real one, bfloat16 rounding can swallow a small
    # survivor, which would read as dropped.
    zero = torch.zeros_like(h, dtype=torch.bfloat16)
    fused = FF.dropout_add(out, zero, 0.1, generator=_gen(device, 3))
    assert torch.equal(fused, FF.dropout(out, 0.1, generator=_gen(device, 3)))
    y.sum().backward()
    assert h.grad is not None and linear.weight.grad is not None


def _composition(F: Any, x: torch.Tensor, residual: torch.Tensor, p: float, bias: torch.Tensor | None) -> Any:
    """What dropout_add is defined as, in F's dropout."""
    return F.dropout(x if bias is None else x + bias, p) + residual


@pytest.mark.parametrize(
    "x_shape,residual_shape,bias_shape",
    [
        ((4, 70), (3, 4, 70), None),  # residual broadcasts x up
        ((4, 70), (4, 70), (3, 1, 70)),  # bias broadcasts x up
        ((), (5,), (5,)),  # 0-dim x: no x.size(-1) for a 1-D bias
        ((0, 70), (0, 70), (1, 70)),  # empty
    ],
)
@pytest.mark.parametrize("p", [0.5, 1.0])
def test_dropout_add_broadcasts_as_the_composition(device, x_shape, residual_shape, bias_shape, p):
    """Shapes torch's composition broadcasts give its shape and, with p = 1, its values
    (the dropped x + bias times 0, NaN kept); in evaluation too."""
    x = torch.randn(x_shape, device=device)
    if x.dim() > 0 and x.numel() > 0:
        x[0, 0] = float("nan")
    residual = torch.randn(residual_shape, device=device)
    bias = None if bias_shape is None else torch.randn(bias_shape, device=device)
    ref = _composition(torch.nn.functional, x, residual, p, bias)
    for training in (True, False):
        y = FF.dropout_add(x, residual, p, training=training, bias=bias)
        assert y.shape == ref.shape and y.dtype == ref.dtype
    if p == 1.0:
        torch.testing.assert_close(FF.dropout_add(x, residual, p, bias=bias), ref, equal_nan=True)


@pytest.mark.parametrize(
    "x_shape,residual_shape,bias_shape",
    [((4, 70), (4, 5), None), ((4, 70), (4, 70), (5,)), ((4, 70), (4, 70), (4,))],
)
@pytest.mark.parametrize("training", [True, False])
def test_dropout_add_refuses_what_the_composition_refuses(device, x_shape, residual_shape, bias_shape, training):
    x, residual = torch.randn(x_shape, device=device), torch.randn(residual_shape, device=device)
    bias = None if bias_shape is None else torch.randn(bias_shape, device=device)
    assert_same_error(
        lambda: torch.nn.functional.dropout(x if bias is None else x + bias, 0.5, training) + residual,
        lambda: FF.dropout_add(x, residual, 0.5, training, bias),
    )


# --- where warnings point ---------------------------------------------------------------


def _warnings_of(fn: Callable[[], Any]) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return caught


@pytest.mark.parametrize(
    "name,shape", [("dropout2d", (2, 3, 4)), ("dropout2d", (2, 3, 4, 5, 6)), ("dropout2d", (2, 3)),
                   ("dropout3d", (2, 3, 4))],
)
@pytest.mark.parametrize("training", [True, False])
def test_functional_warnings_point_at_the_caller(device, name, shape, training):
    """As torch's, the rank warnings of a functional call name the calling line's file."""
    x = torch.randn(shape, device=device)
    ref = _warnings_of(lambda: getattr(torch.nn.functional, name)(x, 0.5, training))
    ours = _warnings_of(lambda: getattr(FF, name)(x, 0.5, training))
    assert [str(w.message) for w in ours] == [str(w.message) for w in ref] != []
    assert [w.filename for w in ours] == [w.filename for w in ref] == [__file__] * len(ref)


@pytest.mark.parametrize("name,shape", [("Dropout2d", (2, 3, 4)), ("Dropout2d", (2, 3, 4, 5, 6)),
                                        ("Dropout3d", (2, 3, 4))])
def test_module_warnings_point_at_the_module_forward(device, name, shape):
    """torch's modules warn from their forward's call of the functional, in
    torch/nn/modules/dropout.py; fastopt's from theirs, in fastopt/nn/dropout.py
    (before the fix: fastopt/nn/_torch_function.py)."""
    x = torch.randn(shape, device=device)
    ref = _warnings_of(lambda: getattr(torch.nn, name)()(x))
    ours = _warnings_of(lambda: getattr(fastopt.nn, name)()(x))
    assert [str(w.message) for w in ours] == [str(w.message) for w in ref] != []
    assert {w.filename for w in ref} == {torch.nn.modules.dropout.__file__}
    assert {w.filename for w in ours} == {fastopt.nn.dropout.__file__}


# --- dropout with p = 1 keeps the input's dtype ------------------------------------------------


@pytest.mark.parametrize("name", ["dropout", "dropout1d", "dropout2d", "dropout3d"])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.float32, torch.bfloat16])
def test_p_one_keeps_dtype_nan_and_sign(device, name, inplace, dtype):
    """torch multiplies by a zero of the input's dtype: a bool input stays bool (in place too),
    NaN and inf give NaN, and -x gives -0.0."""
    if dtype == torch.bool:
        x = torch.tensor([True, False, True, True], device=device)
    else:
        x = torch.tensor([float("nan"), -2.0, 3.0, float("inf")], device=device).to(dtype)
    x = x.view({"dropout1d": (1, 2, 2), "dropout2d": (1, 1, 2, 2)}.get(name, (1, 1, 1, 2, 2)))
    ref = getattr(torch.nn.functional, name)(x.clone(), 1.0, True, inplace)
    source = x.clone()
    y = getattr(FF, name)(source, 1.0, True, inplace)
    assert y.dtype == ref.dtype == dtype
    assert (y is source) == inplace
    torch.testing.assert_close(y, ref, equal_nan=True, atol=0, rtol=0)
    if dtype.is_floating_point:
        assert torch.equal(torch.signbit(y), torch.signbit(ref))


def test_p_one_module_on_bool(device):
    x = torch.tensor([True, False, True], device=device)
    assert torch.equal(fastopt.nn.Dropout(1.0)(x), torch.nn.Dropout(1.0)(x))
    assert fastopt.nn.Dropout(1.0)(x).dtype == torch.bool


# --- Inputs torch refuses: integer dtypes, an empty batch with affine InstanceNorm ----


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_integer_input_raises_not_implemented_like_torch(training):
    """An integer input is refused with torch's exception type (the message names fastopt's op)."""
    for make in (lambda nn: nn.BatchNorm2d(3), lambda nn: nn.InstanceNorm2d(3, affine=True, track_running_stats=True)):
        x = torch.ones(2, 3, 4, 4, dtype=torch.long)
        with pytest.raises(NotImplementedError):
            make(torch.nn).train(training)(x)
        with pytest.raises(NotImplementedError):
            make(fastopt.nn).train(training)(x)


@pytest.mark.parametrize(("weight", "bias"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("running", [False, True])
def test_instance_norm_empty_batch_with_affine_raises_like_torch(weight, bias, running):
    x = torch.randn(0, 3, 5)
    args = (torch.zeros(3) if running else None, torch.ones(3) if running else None,
            torch.ones(3) if weight else None, torch.zeros(3) if bias else None)  # fmt: skip
    assert_same_functional_error(lambda F, x: F.instance_norm(x, *args), x)


def test_sync_batch_norm_without_a_batch_count_asserts_like_torch():
    """torch's SyncBatchNorm asserts num_batches_tracked in training with tracked statistics."""
    def run(nn):
        m = nn.SyncBatchNorm(3)
        m.num_batches_tracked = None
        m(torch.randn(4, 3, 5, 5))

    assert_same_error(lambda: run(torch.nn), lambda: run(fastopt.nn))


# --- An input that is not a tensor ---------------------------------------------------------

NOT_A_TENSOR = {
    "dropout": lambda F, x: F.dropout(x, 0.5),
    "dropout_eval": lambda F, x: F.dropout(x, 0.5, training=False),  # torch refuses it even here
    "dropout2d": lambda F, x: F.dropout2d(x, 0.5),
    "layer_norm": lambda F, x: F.layer_norm(x, (2,)),
    "group_norm": lambda F, x: F.group_norm(x, 1),
    "batch_norm_eval": lambda F, x: F.batch_norm(x, torch.zeros(2), torch.ones(2)),
    "batch_norm_train": lambda F, x: F.batch_norm(x, None, None, training=True),
}


@pytest.mark.parametrize("case", NOT_A_TENSOR)
def test_input_that_is_not_a_tensor(case):
    """torch's TypeError where its functional parses the argument first, its AttributeError elsewhere."""
    assert_same_functional_error(NOT_A_TENSOR[case], [1.0, 2.0])
