"""Drop-in edge cases: copying an optimizer, bad param groups, conjugate
gradients and state that lacks a key, each against torch.optim."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from fastopt.optim import SGD, Adagrad, Adam, RMSprop
from fastopt.optim._base import FusedOptimizer

from .reference import (
    EVERY_OPTIMIZER,
    EVERY_OPTIMIZER_IDS,
    assert_same_error,
    assert_same_state,
    clone_params,
    make_params,
    random_grads,
    run_steps,
    set_grads,
)

OPTIMIZERS, OPT_IDS = EVERY_OPTIMIZER, EVERY_OPTIMIZER_IDS


# --------------------------------------------------------------------------- copies


def _pickled(opt: FusedOptimizer) -> FusedOptimizer:
    return pickle.loads(pickle.dumps(opt))


def _saved(opt: FusedOptimizer) -> FusedOptimizer:
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES: list[Callable[[FusedOptimizer], FusedOptimizer]] = [copy.deepcopy, _pickled, _saved]
COPY_IDS = ["deepcopy", "pickle", "torch_save"]


def _params_of(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("make_copy", COPIES, ids=COPY_IDS)
def test_copy_keeps_max_grad_norm(make_copy):
    """The reported case: a copied SGD(max_grad_norm=1.0) still clips, as clip_grad_norm_ + torch's step."""
    p = torch.nn.Parameter(torch.ones(4))
    q = make_copy(SGD([p], lr=1.0, max_grad_norm=1.0))
    (q_param,) = _params_of(q)
    q_param.grad = torch.full((4,), 10.0)
    q.step()
    ref_param = torch.nn.Parameter(torch.ones(4))
    ref_param.grad = torch.full((4,), 10.0)
    torch.nn.utils.clip_grad_norm_([ref_param], 1.0)
    torch.optim.SGD([ref_param], lr=1.0, foreach=False).step()
    torch.testing.assert_close(q_param.detach(), torch.full((4,), 0.5))
    torch.testing.assert_close(q_param, ref_param)
    torch.testing.assert_close(q_param.grad, ref_param.grad)  # left clipped
    torch.testing.assert_close(q.last_grad_norm, torch.tensor(20.0))


@pytest.mark.parametrize("make_copy", COPIES, ids=COPY_IDS)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_copy_steps_as_the_original(opt, make_copy, device):
    """A copy made mid-run keeps clipping, skipping and ratio tracking: it
    then steps exactly as the original does with the same gradients."""
    ours_cls, _, config = opt
    params = make_params(device, torch.float32, ["non_aligned", "transposed", "bias"])
    original = ours_cls(params, max_grad_norm=0.5, skip_nonfinite=True, **config)
    original.track_update_ratios()
    grads = random_grads(params, 5)
    grads[3][0][7] = float("nan")  # a step that skip_nonfinite skips, after the copy
    for step_grads in grads[:2]:
        set_grads(params, step_grads)
        original.step()
    twin = make_copy(original)
    twin_params = _params_of(twin)
    for name in ("max_grad_norm", "skip_nonfinite", "master_weights", "stochastic_rounding"):
        assert getattr(twin, name) == getattr(original, name), name
    # What the last step computed comes along too.
    torch.testing.assert_close(twin.last_grad_norm, original.last_grad_norm)
    assert twin.update_ratios().keys() == {q for q in twin_params}
    for step_grads in grads[2:]:
        for o, ps in ((original, params), (twin, twin_params)):
            set_grads(ps, step_grads)
            o.step()
        torch.testing.assert_close(twin.last_grad_norm, original.last_grad_norm, equal_nan=True)
        ratios, twin_ratios = original.update_ratios(), twin.update_ratios()
        for p, q in zip(params, twin_params):
            torch.testing.assert_close(twin_ratios[q], ratios[p])
    assert int(original.skipped_steps) == int(twin.skipped_steps) == 1
    assert_same_state(twin, original, twin_params, params, rtol=0, atol=0)


@pytest.mark.parametrize("make_copy", COPIES, ids=COPY_IDS)
def test_copy_keeps_master_weights(make_copy, device):
    """bfloat16 Adam with master_weights: the copy keeps updating the float32 masters."""
    params = clone_params(make_params(device, torch.float32, ["non_aligned", "channels_last", "bias"]), torch.bfloat16)
    original = Adam(params, lr=1e-3, master_weights=True)
    grads = random_grads(params, 4)
    set_grads(params, grads[0])
    original.step()
    twin = make_copy(original)
    twin_params = _params_of(twin)
    assert twin.master_weights
    for step_grads in grads[1:]:
        for o, ps in ((original, params), (twin, twin_params)):
            set_grads(ps, step_grads)
            o.step()
    assert_same_state(twin, original, twin_params, params, rtol=0, atol=0)
    for q in twin_params:
        master = twin.state[q]["master_param"]
        assert master.dtype == torch.float32
        assert torch.equal(q.detach(), master.to(torch.bfloat16))


def test_copy_leaves_device_caches_out():
    """Derived caches (hyperparameter tables) are rebuilt by the copy, never carried."""
    opt = SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    opt.__dict__["_hparams_tables"] = {"stale": None}
    assert "_hparams_tables" not in copy.deepcopy(opt).__dict__
    assert "_hparams_tables" not in _pickled(opt).__dict__


def test_unpickle_without_fastopt_options(monkeypatch):
    """A pickle made when only torch's state was kept loads with the constructor's defaults."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = SGD([p], lr=1.0, momentum=0.9, max_grad_norm=1.0)
    p.grad = torch.full((4,), 10.0)
    opt.step()
    with monkeypatch.context() as m:
        m.setattr(FusedOptimizer, "__getstate__", torch.optim.Optimizer.__getstate__)
        data = pickle.dumps(opt)
    old = pickle.loads(data)
    assert old.max_grad_norm is None and not old.skip_nonfinite and not old.master_weights
    assert not old.stochastic_rounding and old.last_grad_norm is None and int(old.skipped_steps) == 0
    # ... and steps as torch's SGD with the same state, unclipped.
    (q,) = _params_of(old)
    ref_param = torch.nn.Parameter(q.detach().clone())
    ref = torch.optim.SGD([ref_param], lr=1.0, momentum=0.9, foreach=False)
    ref.load_state_dict(copy.deepcopy(old.state_dict()))  # (torch would share the buffers)
    for param in (q, ref_param):
        param.grad = torch.full((4,), 10.0)
    old.step()
    ref.step()
    assert_same_state(old, ref, [q], [ref_param])


# --------------------------------------------------------------------------- bad param groups


def _one() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.ones(2))


def _add_a_param_twice(cls: type) -> None:
    p = _one()
    cls([p]).add_param_group({"params": [p]})


# Each makes an optimizer with the given class, or adds a bad group to one:
# torch's checks must run first, with torch's exception type and message.
BAD_GROUPS: list[tuple[str, Callable[[type], Any]]] = [
    ("set_in_constructor", lambda cls: cls([{"params": {_one()}}])),
    ("set_in_add_param_group", lambda cls: cls([_one()]).add_param_group({"params": {_one()}})),
    ("list_not_dict", lambda cls: cls([_one()]).add_param_group([_one()])),
    ("not_a_tensor", lambda cls: cls([_one()]).add_param_group({"params": [1.0]})),
    ("non_leaf", lambda cls: cls([_one()]).add_param_group({"params": [_one() * 2]})),
    ("no_params_key", lambda cls: cls([_one()]).add_param_group({"lr": 0.1})),
    ("shared_param", _add_a_param_twice),
]


@pytest.mark.parametrize("case", BAD_GROUPS, ids=[c[0] for c in BAD_GROUPS])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_bad_param_group_errors_as_torch(opt, case):
    ours_cls, ref_cls, _ = opt
    _, make = case
    assert_same_error(lambda: make(ref_cls), lambda: make(ours_cls))


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_refused_group_leaves_optimizer_unchanged(opt):
    ours_cls, _, _ = opt
    ours = ours_cls([_one()])
    with pytest.raises(TypeError):
        ours.add_param_group({"params": {_one()}})
    assert len(ours.param_groups) == 1


def test_named_params_added_with_stochastic_rounding():
    """fastopt's bfloat16 check reads the parameters torch extracted from (name, tensor) pairs."""
    model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    opt = SGD(model.named_parameters(), lr=0.1, stochastic_rounding=True)
    extra = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
    opt.add_param_group({"params": [("extra", extra)]})
    assert opt.param_groups[1]["params"] == [extra] and opt.param_groups[1]["param_names"] == ["extra"]
    with pytest.raises(ValueError, match="stochastic_rounding supports bfloat16"):
        opt.add_param_group({"params": [("half", torch.nn.Parameter(torch.zeros(2, dtype=torch.float16)))]})
    assert len(opt.param_groups) == 2


# --------------------------------------------------------------------------- a parameter listed twice

# torch warns about a group that lists a parameter twice, and updates it once per listing.
DUPLICATES_WARN = pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")


@DUPLICATES_WARN
@pytest.mark.parametrize("make_copy", [lambda o: o, _pickled], ids=["original", "pickle"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_parameter_listed_twice_steps_as_torch(opt, make_copy, device, two_threads):
    """A parameter listed three times is updated three times a step, one update
    after the other, as torch's for-loop does: not by one op call in which
    two work items race on its memory. Its listings arrive while an older
    parameter already has state, so that its first step's listings sit in a
    bucket of new state and in the older parameter's bucket (SGD's buffer)."""
    ours_cls, ref_cls, config = opt
    ref_old, ref_big, ref_small = (torch.nn.Parameter(torch.randn(n, device=device)) for n in (5, 1 << 20, 3))
    ours_old, ours_big, ours_small = clone_params([ref_old, ref_big, ref_small])
    ref = ref_cls([ref_old], foreach=False, **config)
    ours = ours_cls([ours_old], **config)
    steps = random_grads([ref_old, ref_big, ref_small], 4)
    for opt_, params in ((ref, [ref_old]), (ours, [ours_old])):
        set_grads(params, steps[0][:1])
        opt_.step()
    ref.add_param_group({"params": [ref_big, ref_small, ref_big, ref_big]})
    ours.add_param_group({"params": [ours_big, ours_small, ours_big, ours_big]})
    ours = make_copy(ours)
    ours_old, ours_big, ours_small = ours.param_groups[0]["params"] + ours.param_groups[1]["params"][:2]
    run_steps(ref, [ref_old, ref_big, ref_small], steps[1:])
    run_steps(ours, [ours_old, ours_big, ours_small], steps[1:])
    assert_same_state(ours, ref, [ours_old, ours_big, ours_small], [ref_old, ref_big, ref_small])


@DUPLICATES_WARN
@pytest.mark.parametrize("conjugate", [False, True], ids=["real", "conjugate"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_parameter_listed_twice_unscaled_once(opt, conjugate, device, two_threads):
    """With AMP's grad_scale the first update unscales .grad in place; the
    second reads it unscaled, not divided by the scale again. A conjugate
    gradient goes to the op as a resolved copy, which the first round
    unscales and writes back to .grad: the second round reads it from there,
    not the copy of the scaled gradient that the step started with."""
    ours_cls, ref_cls, config = opt
    dtype = torch.complex64 if conjugate else torch.float32
    ref_params = [torch.nn.Parameter(torch.randn(1 << 20, dtype=dtype, device=device))]
    ours_params = clone_params(ref_params)
    ref = ref_cls(ref_params * 2, foreach=False, **config)
    ours = ours_cls(ours_params * 2, **config)
    scale = torch.tensor(1024.0, device=device)
    for step_grads in random_grads(ref_params, 3):
        set_grads(ref_params, step_grads)
        ref.step()
        (param,) = ours_params
        scaled = step_grads[0] * scale
        grad = param.grad = _conj_view(scaled) if conjugate else scaled
        ours.grad_scale, ours.found_inf = scale, torch.tensor(0.0, device=device)
        ours.step()
        assert param.grad is grad and grad.is_conj() == conjugate
        torch.testing.assert_close(grad, step_grads[0])
    assert_same_state(ours, ref, ours_params, ref_params)


@DUPLICATES_WARN
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_parameter_listed_twice_clipped_as_listed_once(opt, device):
    """max_grad_norm clips by the norm of the parameters' gradients, in which
    a parameter listed twice counts once: the step is torch's after
    clip_grad_norm_ over the model's (distinct) parameters."""
    ours_cls, ref_cls, config = opt
    ref_params = [torch.nn.Parameter(torch.randn(n, device=device)) for n in (1000, 7)]
    ours_params = clone_params(ref_params)
    ref = ref_cls(ref_params + ref_params[:1], foreach=False, **config)
    ours = ours_cls(ours_params + ours_params[:1], max_grad_norm=1.0, **config)
    for step_grads in random_grads(ref_params, 3):
        set_grads(ref_params, step_grads)
        torch.nn.utils.clip_grad_norm_(ref_params, 1.0, foreach=False)
        ref.step()
        set_grads(ours_params, step_grads)
        ours.step()
    assert_same_state(ours, ref, ours_params, ref_params, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- conjugate gradients


def _conj_view(values: Tensor) -> Tensor:
    """A tensor equal to ``values`` whose conjugate bit is set, as autograd makes for p.conj() * w."""
    view = values.conj().resolve_conj().conj()
    assert view.is_conj() and torch.equal(view, values)
    return view


def test_autograd_makes_conjugate_gradients(device):
    """The ordinary code that gives a parameter a conjugate gradient: torch's SGD takes it, so must ours."""
    w = torch.randn(33, dtype=torch.complex64, device=device)
    ref_param = torch.nn.Parameter(torch.randn(33, dtype=torch.complex64, device=device))
    ours_param = clone_params([ref_param])[0]
    ref = torch.optim.SGD([ref_param], lr=0.1, momentum=0.9, foreach=False)
    ours = SGD([ours_param], lr=0.1, momentum=0.9)
    for _ in range(3):
        for opt, param in ((ref, ref_param), (ours, ours_param)):
            opt.zero_grad()
            (param.conj() * w).real.sum().backward()
            assert param.grad.is_conj()
            opt.step()
    assert_same_state(ours, ref, [ours_param], [ref_param])


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_conjugate_gradients_step_as_resolved(opt, device):
    """Every optimizer updates by a conjugate (or negative-bit) gradient as by its value.

    torch's own Adam, Adagrad and RMSprop refuse such gradients, so the
    reference takes the resolved ones. The caller's gradients are left alone.
    """
    ours_cls, ref_cls, config = opt
    ref_params = [torch.nn.Parameter(torch.randn(n, dtype=torch.complex64, device=device)) for n in (33, 1)]
    ours_params = clone_params(ref_params)
    ref = ref_cls(ref_params, foreach=False, **config)
    ours = ours_cls(ours_params, **config)
    for step_grads in random_grads(ref_params, 4):
        set_grads(ref_params, step_grads)
        ours_params[0].grad = _conj_view(step_grads[0])
        ours_params[1].grad = torch._neg_view(-step_grads[1])  # equal values, negative bit set
        grads = [p.grad for p in ours_params]
        ref.step()
        ours.step()
        assert [p.grad for p in ours_params] == grads  # the same objects
        assert ours_params[0].grad.is_conj() and ours_params[1].grad.is_neg()
        for p, g in zip(ours_params, step_grads):
            assert torch.equal(p.grad, g)
    assert_same_state(ours, ref, ours_params, ref_params)


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_conjugate_gradients_unscaled_and_clipped_in_place(opt, device):
    """AMP's grad_scale and max_grad_norm with conjugate gradients: the caller's
    .grad (the same tensor) is left unscaled and clipped, as for any gradient,
    and the step is torch's after unscaling and clip_grad_norm_."""
    ours_cls, ref_cls, config = opt
    ref_params = [torch.nn.Parameter(torch.randn(33, dtype=torch.complex64, device=device))]
    ours_params = clone_params(ref_params)
    ref = ref_cls(ref_params, foreach=False, **config)
    ours = ours_cls(ours_params, max_grad_norm=1.0, **config)
    scale = torch.tensor(1024.0, device=device)
    for step_grads in random_grads(ref_params, 3):
        set_grads(ref_params, step_grads)
        torch.nn.utils.clip_grad_norm_(ref_params, 1.0, foreach=False)
        ref.step()
        (param,) = ours_params
        grad = param.grad = _conj_view(step_grads[0] * scale)
        ours.grad_scale, ours.found_inf = scale, torch.tensor(0.0, device=device)
        ours.step()
        assert param.grad is grad and grad.is_conj()
        torch.testing.assert_close(grad, ref_params[0].grad)
    assert_same_state(ours, ref, ours_params, ref_params, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- state lacking a key


@pytest.mark.parametrize("dropped", ["popped", "set_to_none"])
def test_sgd_starts_a_missing_momentum_buffer(dropped, device):
    """State that exists without momentum_buffer (a user's own entry), or with
    it set to None (a momentum reset; checkpoints of old torch releases, which
    kept None buffers): torch's SGD starts the buffer from the gradient, as on
    a first step; so does ours."""
    ref_params = make_params(device, torch.float32, ["non_aligned", "transposed", "bias", "scalar"])
    ours_params = clone_params(ref_params)
    config = {"lr": 0.01, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.1}
    ref = torch.optim.SGD(ref_params, foreach=False, **config)
    ours = SGD(ours_params, **config)
    grads = random_grads(ref_params, 4)
    for step, step_grads in enumerate(grads):
        if step in (0, 2):
            # Before the first step, and mid-run with the buffer dropped.
            for opt, params in ((ref, ref_params), (ours, ours_params)):
                for p in params[::2]:
                    if dropped == "popped":
                        opt.state[p].pop("momentum_buffer", None)
                    else:
                        opt.state[p]["momentum_buffer"] = None
                    opt.state[p]["note"] = step
        for opt, params in ((ref, ref_params), (ours, ours_params)):
            set_grads(params, step_grads)
            opt.step()
        assert_same_state(ours, ref, ours_params, ref_params)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sgd_momentum_switched_on_with_master_weights(dtype, device):
    """SGD without momentum keeps only master_param; switching momentum on
    later starts the buffer from the gradient and keeps the master: the
    masters follow torch's float32 run with the same switch."""
    ref_params = make_params(device, torch.float32, ["non_aligned", "channels_last", "bias"])
    ref_params = clone_params([p.detach().to(dtype) for p in ref_params], torch.float32)
    ours_params = clone_params(ref_params, dtype)
    ref = torch.optim.SGD(ref_params, lr=0.01, foreach=False)
    ours = SGD(ours_params, lr=0.01, master_weights=True)
    grads = [[g.to(dtype) for g in step] for step in random_grads(ref_params, 5)]
    for step, step_grads in enumerate(grads):
        if step == 2:
            for opt in (ref, ours):
                opt.param_groups[0]["momentum"] = 0.9
        set_grads(ref_params, [g.float() for g in step_grads])
        ref.step()
        set_grads(ours_params, step_grads)
        ours.step()
    for p, q in zip(ours_params, ref_params):
        state = ours.state[p]
        assert set(state) == {"master_param", "momentum_buffer"}
        assert state["momentum_buffer"].dtype == torch.float32
        torch.testing.assert_close(state["master_param"], q.detach())
        torch.testing.assert_close(state["momentum_buffer"], ref.state[q]["momentum_buffer"])


# (name, fastopt class, torch class, config, change): state made by steps
# with ``config`` (or holding only a user's "note" when change is None) lacks
# a key that ``change`` makes the update need. torch raises KeyError there
# (it creates state only when a parameter has none), and fastopt raises the
# same rather than inventing history for a moment that was never kept.
MISSING_KEYS: list[tuple[str, type, type, dict[str, Any], dict[str, Any] | None]] = [
    ("adam_note", Adam, torch.optim.Adam, {}, None),
    ("adam_amsgrad_later", Adam, torch.optim.Adam, {}, {"amsgrad": True}),
    ("rmsprop_note", RMSprop, torch.optim.RMSprop, {}, None),
    ("rmsprop_centered_later", RMSprop, torch.optim.RMSprop, {}, {"centered": True}),
    ("rmsprop_momentum_later", RMSprop, torch.optim.RMSprop, {}, {"momentum": 0.9}),
]


@pytest.mark.parametrize("case", MISSING_KEYS, ids=[c[0] for c in MISSING_KEYS])
@pytest.mark.parametrize("master_weights", [False, True])
def test_missing_state_key_errors_as_torch(case, master_weights):
    _, ours_cls, ref_cls, config, change = case
    dtype = torch.bfloat16 if master_weights else torch.float32

    def run(cls: type, **kw: Any) -> None:
        p = torch.nn.Parameter(torch.ones(3, dtype=dtype))
        opt = cls([p], **config, **kw)
        p.grad = torch.ones(3, dtype=dtype)
        if change is None:
            opt.state[p]["note"] = 1
        else:
            opt.step()
            opt.param_groups[0].update(change)
        opt.step()

    assert_same_error(lambda: run(ref_cls), lambda: run(ours_cls, master_weights=master_weights))


def _state_tensors(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [v.clone() for state in opt.state.values() for v in state.values() if isinstance(v, Tensor)]


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_state_of_another_dtype_after_model_half(opt, device):
    """model.half() after some steps leaves float32 state behind. torch's Adam,
    AdamW and centered RMSprop then raise a RuntimeError; its SGD, Adagrad and
    plain RMSprop step on in mixed precision, which fastopt's kernels (one dtype
    for a parameter and its state) do not do. fastopt raises torch's
    RuntimeError for every optimizer, naming the state and both dtypes, and
    changes nothing. With master_weights=True (the README's advice) the float32
    state carries on."""
    ours_cls, ref_cls, config = opt
    for cls, extra in ((ours_cls, {}), (ref_cls, {}), (ours_cls, {"master_weights": True})):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3).to(device)
        optimizer = cls(model.parameters(), **config, **extra)
        model(torch.randn(2, 4, device=device)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        model.half()
        model(torch.randn(2, 4, device=device, dtype=torch.float16)).sum().backward()
        params, state = [p.detach().clone() for p in model.parameters()], _state_tensors(optimizer)
        if extra:
            optimizer.step()
            assert not torch.equal(model.weight, params[0])
            assert all(t.dtype == torch.float32 for t in _state_tensors(optimizer))
        elif cls is ours_cls:
            with pytest.raises(RuntimeError, match=r"must have one dtype, but \w+\[0\] is Float and params\[0\] is Half"):
                optimizer.step()
            for before, after in zip(params + state, list(model.parameters()) + _state_tensors(optimizer)):
                assert torch.equal(before, after)
        elif config.get("centered", False) or cls in (torch.optim.Adam, torch.optim.AdamW):
            with pytest.raises(RuntimeError):
                optimizer.step()
        else:  # torch's mixed-precision step, which fastopt refuses
            optimizer.step()


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_load_state_dict_keeps_options(opt):
    """torch's load_state_dict goes through __setstate__ with torch's keys only: fastopt's options stay."""
    ours_cls, _, config = opt
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    ours = ours_cls([p], max_grad_norm=1.0, skip_nonfinite=True, master_weights=True, stochastic_rounding=True, **config)
    p.grad = torch.full((4,), 10.0, dtype=torch.bfloat16)
    ours.step()
    norm = ours.last_grad_norm
    ours.load_state_dict(ours.state_dict())
    assert (ours.max_grad_norm, ours.skip_nonfinite, ours.master_weights, ours.stochastic_rounding) == (1.0, True, True, True)
    assert ours.last_grad_norm is norm
    assert ours.state[p]["master_param"].dtype == torch.float32


# --------------------------------------------------------------------------- master weights and sparse gradients


def test_adagrad_master_accumulator_starts_from_the_exact_initial_value():
    """torch's constructor fills "sum" in the 16-bit dtype; a master's float32 one must not inherit the rounding."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64).to(torch.bfloat16))
    q = torch.nn.Parameter(p.detach().float())
    ours = Adagrad([p], lr=0.1, initial_accumulator_value=0.1, master_weights=True)
    ref = torch.optim.Adagrad([q], lr=0.1, initial_accumulator_value=0.1)
    for _ in range(3):
        g = torch.randn(64, dtype=torch.bfloat16)
        p.grad, q.grad = g, g.float()
        ours.step()
        ref.step()
    assert torch.equal(ours.state[p]["sum"], ref.state[q]["sum"])
    torch.testing.assert_close(ours.state[p]["master_param"], q.detach(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("ours_cls,torch_cls,config", OPTIMIZERS, ids=OPT_IDS)
def test_master_state_back_from_a_torch_optimizer_is_rebuilt(ours_cls, torch_cls, config):
    """A master cast to bfloat16 by a torch optimizer, which never updated it, is rebuilt from the parameter."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, dtype=torch.bfloat16))
    first = ours_cls([p], master_weights=True, **config)
    p.grad = torch.randn_like(p)
    first.step()
    q = torch.nn.Parameter(p.detach().clone())
    middle = torch_cls([q], **config)
    middle.load_state_dict(first.state_dict())
    q.grad = torch.randn_like(q)
    middle.step()
    # The same as loading the checkpoint without its stale master, which
    # builds the master from the parameter.
    state = middle.state_dict()
    stripped = copy.deepcopy(state)
    for entry in stripped["state"].values():
        entry.pop("master_param")
    grad = torch.randn_like(q)
    masters = []
    for checkpoint in (state, stripped):
        r = torch.nn.Parameter(q.detach().clone())
        last = ours_cls([r], master_weights=True, **config)
        last.load_state_dict(checkpoint)
        r.grad = grad.clone()
        last.step()
        masters.append(last.state[r]["master_param"])
    assert masters[0].dtype == torch.float32
    assert torch.equal(masters[0], masters[1])


def test_sparse_gradients_are_left_clipped_in_grad():
    """As the dense ones: .grad holds the clipped gradient the step used."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    lin = torch.nn.Linear(3, 1)
    params = [*emb.parameters(), *lin.parameters()]
    opt = SGD(params, lr=0.1, max_grad_norm=0.01)
    lin(emb(torch.tensor([1, 2, 5]))).pow(2).sum().backward()
    norm = torch.nn.utils.get_total_norm([emb.weight.grad.coalesce().values(), *(p.grad for p in lin.parameters())])
    raw = emb.weight.grad.coalesce().values().clone()
    opt.step()
    torch.testing.assert_close(emb.weight.grad.coalesce().values(), raw * (0.01 / (norm + 1e-6)))
