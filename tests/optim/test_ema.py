"""fastopt.optim.EMA and ema_multi_avg_fn against float64 and torch references."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import fastopt
from fastopt.optim import EMA, ema_multi_avg_fn

from .reference import assert_same_error, make_params


def _model(device: str) -> torch.nn.Module:
    # A BatchNorm brings float buffers (averaged) and num_batches_tracked (copied).
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5)
    ).to(device)


def _perturb(tensors) -> None:
    with torch.no_grad():
        for t in tensors:
            if t.is_floating_point() or t.is_complex():
                t.add_(torch.randn_like(t))
            else:
                t.add_(1)


def _updates_against_lerp(ema: EMA, params: list, steps: int) -> list:
    """Runs ``steps`` perturb-and-update rounds of ``ema`` (decay 0.9) and returns
    the shadow that torch._foreach_lerp_ computes over the same rounds."""
    expected = [s.clone() for s in ema.shadow]
    for _ in range(steps):
        _perturb(params)
        ema.update()
        torch._foreach_lerp_(expected, [p.detach() for p in params], 1 - 0.9)
    return expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_update_matches_foreach_lerp(dtype, device):
    """One update rounds as torch._foreach_lerp_(shadow, params, 1 - decay)."""
    params = make_params(device, dtype)  # every layout of the optimizer tests
    ema = EMA(params, decay=0.9)
    expected = _updates_against_lerp(ema, params, steps=3)
    for ours, ref in zip(ema.shadow, expected):
        # the SIMD body rounds exactly as ATen's lerp; allow a last bit in tails
        torch.testing.assert_close(ours, ref, rtol=0 if dtype == torch.float64 else 2**-20, atol=0)


# 16-bit storage rounds each update exactly as torch._foreach_lerp_ does (see
# above); against float64 it stagnates once (1 - decay) * (param - shadow)
# drops below half an ulp, for torch and fastopt alike.
@pytest.mark.parametrize("dtype", [torch.float32], ids=str)
def test_update_matches_float64_reference(dtype, device):
    params = make_params(device, dtype, ["non_aligned", "channels_last", "bias"])
    exact = [p.detach().double() for p in params]
    ema = EMA(params, decay=0.99)
    for _ in range(20):
        _perturb(params)
        ema.update()
        exact = [s + 0.01 * (p.detach().double() - s) for s, p in zip(exact, params)]
    for ours, ref in zip(ema.shadow, exact):
        # one rounding to the storage type per update
        torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


def test_module_buffers_and_average_parameters_context(device):
    model = _model(device)
    ema = EMA(model, decay=0.5)
    tracked = [*model.parameters(), *model.buffers()]
    assert len(ema.shadow) == len(tracked)
    _perturb(tracked)
    ema.update()
    trained = [t.detach().clone() for t in tracked]
    for t, s in zip(tracked, ema.shadow):
        if t.is_floating_point():
            assert not torch.equal(s, t)  # averaged, so between the two
        else:
            assert torch.equal(s, t)  # num_batches_tracked is copied
    with ema.average_parameters():
        for t, s in zip(tracked, ema.shadow):
            assert torch.equal(t, s)
        model.train()(torch.randn(2, 3, 6, 6, device=device))  # BatchNorm writes its buffers
    for t, v in zip(tracked, trained):
        assert torch.equal(t, v)  # restored exactly
    with pytest.raises(RuntimeError, match="boom"), ema.average_parameters():
        raise RuntimeError("boom")
    for t, v in zip(tracked, trained):
        assert torch.equal(t, v)  # restored on an exception too


def test_copy_to_another_model(device):
    model, other = _model(device), _model(device)
    ema = EMA(model, decay=0.9)
    _perturb([*model.parameters(), *model.buffers()])
    ema.update()
    ema.copy_to(other)
    for t, s in zip([*other.parameters(), *other.buffers()], ema.shadow):
        assert torch.equal(t, s)
    with pytest.raises(ValueError, match="tensors"):
        ema.copy_to(list(other.parameters()))


def test_state_dict_round_trip(device):
    model = _model(device)
    ema = EMA(model, decay=0.9, warmup=True)
    for _ in range(3):
        _perturb([*model.parameters(), *model.buffers()])
        ema.update()
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    restored = EMA(copy.deepcopy(model), decay=0.5)
    restored.load_state_dict(torch.load(buffer))
    assert (restored.decay, restored.warmup, restored.num_updates) == (0.9, True, 3)
    for a, b in zip(restored.shadow, ema.shadow):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="tensors"):
        EMA(torch.nn.Linear(2, 2)).load_state_dict(ema.state_dict())


def test_warmup_decay():
    ema = EMA([torch.zeros(3)], decay=0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update()
    assert decays == [1 / 10, 2 / 11, 3 / 12]
    assert EMA([torch.zeros(3)], decay=0.5, warmup=True).current_decay() == 0.1
    assert EMA([torch.zeros(3)], decay=0.999).current_decay() == 0.999


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_invalid_decay_matches_torch(decay):
    assert_same_error(lambda: get_ema_multi_avg_fn(decay), lambda: ema_multi_avg_fn(decay))
    assert_same_error(lambda: get_ema_multi_avg_fn(decay), lambda: EMA([torch.zeros(2)], decay=decay))


@pytest.mark.parametrize("use_buffers", [False, True])
def test_averaged_model_multi_avg_fn_matches_torch(use_buffers, device):
    model = _model(device)
    averaged = [
        AveragedModel(model, multi_avg_fn=fn, use_buffers=use_buffers)
        for fn in (get_ema_multi_avg_fn(0.9), ema_multi_avg_fn(0.9))
    ]
    for _ in range(4):
        _perturb([*model.parameters(), *model.buffers()])
        for a in averaged:
            a.update_parameters(model)
    ref, ours = averaged
    for a, b in zip([*ours.parameters(), *ours.buffers()], [*ref.parameters(), *ref.buffers()]):
        torch.testing.assert_close(a, b, rtol=2**-20, atol=0)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_tensors_are_averaged(dtype, device):
    """Complex parameters and buffers are weights: averaged (by torch's lerp, the fused op
    taking real tensors only), not copied like integer counters."""
    params = [
        torch.nn.Parameter(torch.randn(7, 3, dtype=dtype, device=device)),
        torch.randn(5, 4, dtype=dtype, device=device).t(),  # a transposed buffer
        torch.nn.Parameter(torch.randn(11, device=device)),  # a real one beside them
    ]
    ema = EMA(params, decay=0.9)
    expected = _updates_against_lerp(ema, params, steps=3)
    for ours, ref, p in zip(ema.shadow, expected, params):
        assert not torch.equal(ours, p.detach())
        torch.testing.assert_close(ours, ref, rtol=2**-20, atol=0)


def test_multi_avg_fn_averages_complex_like_torch(device):
    """get_ema_multi_avg_fn lerps complex tensors with torch._foreach_lerp_; so does this one."""
    current = [
        torch.randn(6, dtype=torch.complex64, device=device),
        torch.randn(3, 2, dtype=torch.complex64, device=device).t(),
    ]
    ref = [torch.randn_like(t) for t in current]
    ours = [t.clone() for t in ref]
    for _ in range(3):
        _perturb(current)
        get_ema_multi_avg_fn(0.9)(ref, current, 0)
        ema_multi_avg_fn(0.9)(ours, current, 0)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_op_validates_its_input():
    with pytest.raises(RuntimeError, match="params has 1 tensors but shadow has 2"):
        torch.ops.fastopt.ema_([torch.zeros(2), torch.zeros(2)], [torch.zeros(2)], decay=0.9)
    with pytest.raises(TypeError, match="floating-point"):
        torch.ops.fastopt.ema_([torch.zeros(2, dtype=torch.long)], [torch.zeros(2, dtype=torch.long)], decay=0.9)
    with pytest.raises(RuntimeError, match="decay"):
        torch.ops.fastopt.ema_([torch.zeros(2)], [torch.zeros(2)], decay=2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_tensor_decay_overload_equals_float_decay(device, dtype):
    """ema_.tensor_decay reads the decay from a CPU tensor (whatever the
    params' device) and updates exactly as ema_ with that float."""
    decay = 17 / 26  # not a round number in any float format
    params = [torch.randn(n, device=device, dtype=dtype) for n in (1000003, 7)]
    by_float = [p + 1 for p in params]
    by_tensor = [t.clone() for t in by_float]
    torch.ops.fastopt.ema_(by_float, params, decay=decay)
    torch.ops.fastopt.ema_.tensor_decay(by_tensor, params, decay=torch.tensor(decay, dtype=torch.float64))
    for a, b in zip(by_tensor, by_float):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tensor_decay_overload_validates_the_decay(device):
    shadow, params = [torch.zeros(2, device=device)], [torch.ones(2, device=device)]
    with pytest.raises(RuntimeError, match="one element, got 2"):
        torch.ops.fastopt.ema_.tensor_decay(shadow, params, decay=torch.tensor([0.5, 0.5]))
    with pytest.raises(TypeError, match="floating point, got Long"):
        torch.ops.fastopt.ema_.tensor_decay(shadow, params, decay=torch.tensor(1))
    with pytest.raises(RuntimeError, match=r"decay must be in \[0, 1\], got 1.5"):
        torch.ops.fastopt.ema_.tensor_decay(shadow, params, decay=torch.tensor(1.5))
    if device != "cpu":
        with pytest.raises(RuntimeError, match="must be on the CPU"):
            torch.ops.fastopt.ema_.tensor_decay(shadow, params, decay=torch.tensor(0.5, device=device))
    assert torch.equal(shadow[0], torch.zeros(2, device=device))


def test_exported():
    assert fastopt.EMA is EMA and fastopt.optim.ema_multi_avg_fn is ema_multi_avg_fn


# --------------------------------------------------------------------------- tensors that change


def _tracked(model: torch.nn.Module) -> list:
    return [*model.parameters(), *model.buffers()]


def _assert_follows(ema: EMA, model: torch.nn.Module) -> None:
    """update(), copy_to() and average_parameters() act on the model's tensors as they
    are now; the averages keep their own dtypes (AveragedModel's semantics)."""
    dtypes = [s.dtype for s in ema.shadow]
    for _ in range(2):
        _perturb(_tracked(model))
        expected = [
            s.lerp(t.detach().to(s.dtype), 0.5) if s.is_floating_point() else t.detach().clone()
            for s, t in zip(ema.shadow, _tracked(model))
        ]
        ema.update()
        for s, e in zip(ema.shadow, expected):
            torch.testing.assert_close(s, e, rtol=2**-20, atol=0)
    assert [s.dtype for s in ema.shadow] == dtypes
    trained = [t.detach().clone() for t in _tracked(model)]
    with ema.average_parameters():
        for t, s in zip(_tracked(model), ema.shadow):
            assert torch.equal(t, s.to(t.dtype))
    for t, v in zip(_tracked(model), trained):
        assert torch.equal(t, v)
    ema.copy_to()
    for t, s in zip(_tracked(model), ema.shadow):
        assert torch.equal(t, s.to(t.dtype))


def _new_data(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.data = p.data.clone()


def _assign_state_dict(model: torch.nn.Module) -> None:
    # New Parameter objects, and new buffers.
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)


def _replace_linear(model: torch.nn.Module) -> None:
    old = model[3]
    model[3] = torch.nn.Linear(old.in_features, old.out_features, device=old.weight.device)


CHANGES = {
    "channels_last": lambda m: m.to(memory_format=torch.channels_last),  # new .data, same Parameters
    "data_assigned": _new_data,
    "load_state_dict_assign": _assign_state_dict,
    "submodule_replaced": _replace_linear,
    "half": lambda m: m.half(),  # the averages stay float32
    "double": lambda m: m.double(),
}


@pytest.mark.parametrize("change", CHANGES, ids=str)
def test_follows_tensors_that_get_new_storage(change, device):
    """The finding: after any of these, the EMA kept averaging (and swapping into) the
    storage the tensors had when it was built."""
    model = _model(device)
    ema = EMA(model, decay=0.5)
    _assert_follows(ema, model)
    CHANGES[change](model)
    _assert_follows(ema, model)
    assert all(s.dtype != torch.float16 for s in ema.state_dict()["shadow"])


@pytest.mark.skipif(not torch.cuda.is_available() or not fastopt.build_info()["cuda"], reason="needs CUDA")
def test_follows_a_model_moved_to_another_device():
    """The averages stay where they were made, as AveragedModel's copy does."""
    model = _model("cpu")
    ema = EMA(model, decay=0.5)
    model.to("cuda")
    _assert_follows(ema, model)
    assert all(s.device.type == "cpu" for s in ema.shadow)


def test_tensor_list_follows_new_data(device):
    """An EMA of tensors follows each one's current .data, read in its average's dtype."""
    params = make_params(device, torch.float32, ["non_aligned", "channels_last", "bias"])
    ema = EMA(params, decay=0.9)
    params[1].data = params[1].data.contiguous()  # was channels_last
    params[2].data = params[2].data.double()
    _perturb(params)
    expected = [s.lerp(p.detach().float(), 1 - 0.9) for s, p in zip(ema.shadow, params)]
    ema.update()
    for ours, ref in zip(ema.shadow, expected):
        torch.testing.assert_close(ours, ref, rtol=2**-20, atol=0)
    ema.copy_to()
    for p, s in zip(params, ema.shadow):
        assert torch.equal(p, s.to(p.dtype))


def test_grouping_is_rebuilt_only_when_tensors_change(device):
    model = _model(device)
    ema = EMA(model, decay=0.5)
    ema.update()
    groups = ema._current_groups()
    ema.update()
    assert ema._current_groups() is groups  # the common path reuses it
    model[0].weight.data = model[0].weight.data.clone()
    ema.update()
    assert ema._current_groups() is not groups
    groups = ema._current_groups()
    model[3].weight = torch.nn.Parameter(model[3].weight.detach())  # a new object, same storage
    assert ema._current_groups() is not groups


@pytest.mark.parametrize(
    "reshape",
    [
        lambda p: setattr(p, "data", torch.randn(p.numel() + 1, device=p.device)),
        lambda p: setattr(p, "data", p.data.view(-1)),  # same storage: the op sees it
    ],
    ids=["new_storage", "view"],
)
def test_shape_change_raises(reshape, device):
    model = _model(device)
    ema = EMA(model)
    reshape(model[3].weight)
    with pytest.raises((ValueError, RuntimeError), match="shape"):
        ema.update()
    with pytest.raises(ValueError, match="shape"):
        ema.copy_to()
    with pytest.raises(ValueError, match="shape"), ema.average_parameters():
        pass


def test_tensors_added_to_the_module_raise(device):
    model = _model(device)
    ema = EMA(model)
    model.register_buffer("extra", torch.zeros(3, device=device))
    for use in (ema.update, ema.copy_to):
        with pytest.raises(ValueError, match="added or removed"):
            use()
