"""Run a fastopt optimizer and its torch.optim reference side by side."""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

import fastopt.nn.functional
import fastopt.optim

# A parameter set that covers the layouts a kernel can trip over. Each entry
# is (name, factory(device, dtype) -> Parameter).
ParamFactory = Callable[[str, torch.dtype], torch.nn.Parameter]


def _param(t: Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t)


PARAM_SET: list[tuple[str, ParamFactory]] = [
    # minimal: one scalar (0-dim) parameter
    ("scalar", lambda d, dt: _param(torch.randn((), device=d, dtype=dt))),
    # empty: zero elements must be a no-op, not a crash
    ("empty", lambda d, dt: _param(torch.randn(0, 3, device=d, dtype=dt))),
    # non-aligned: 1000003 is prime, so the SIMD/vector loop leaves a tail,
    # and it spans several 64K-element chunks of the multi-tensor driver
    ("non_aligned", lambda d, dt: _param(torch.randn(1000003, device=d, dtype=dt))),
    # offset: a view one element into its storage (not 16-byte aligned, while
    # its grad and state are), spanning two 64K-element driver chunks
    ("offset", lambda d, dt: _param(torch.randn(70002, device=d, dtype=dt)[1:])),
    # non-contiguous: a transposed parameter whose grad arrives contiguous
    ("transposed", lambda d, dt: _param(torch.randn(37, 19, device=d, dtype=dt).t())),
    # non-dense: every other column of a matrix; the kernel must not touch the gaps
    ("strided", lambda d, dt: _param(torch.randn(24, 40, device=d, dtype=dt)[:, ::2])),
    # channels_last 4-d conv weight
    (
        "channels_last",
        lambda d, dt: _param(
            torch.randn(8, 6, 3, 3, device=d, dtype=dt).to(memory_format=torch.channels_last)
        ),
    ),
    # a bias-sized vector
    ("bias", lambda d, dt: _param(torch.randn(17, device=d, dtype=dt))),
]


def make_params(device: str, dtype: torch.dtype, names: Sequence[str] | None = None) -> list[torch.nn.Parameter]:
    return [f(device, dtype) for n, f in PARAM_SET if names is None or n in names]


def clone_params(params: Sequence[torch.nn.Parameter], dtype: torch.dtype | None = None) -> list[torch.nn.Parameter]:
    """Copies with the same strides (a transposed param stays transposed)."""
    out = []
    for p in params:
        c = torch.empty_strided(p.size(), p.stride(), dtype=dtype or p.dtype, device=p.device)
        c.copy_(p.detach())
        out.append(torch.nn.Parameter(c))
    return out


def random_grads(params: Sequence[Tensor], steps: int, skip: Callable[[int, int], bool] = lambda i, s: False) -> list[list[Tensor | None]]:
    """grads[step][i]; None where skip(i, step) says the param gets no grad."""
    return [
        [None if skip(i, s) else torch.randn(p.shape, device=p.device, dtype=p.dtype) for i, p in enumerate(params)]
        for s in range(steps)
    ]


def set_grads(params: Sequence[torch.nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.to(p.dtype).clone()


def run_steps(opt: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter], grads: list[list[Tensor | None]]) -> None:
    for step_grads in grads:
        set_grads(params, step_grads)
        opt.step()


def assert_same_state(ours: torch.optim.Optimizer, ref: torch.optim.Optimizer, ours_params, ref_params, **tol) -> None:
    """Parameters and every state entry match, with the same keys."""
    for i, (p, q) in enumerate(zip(ours_params, ref_params)):
        torch.testing.assert_close(p, q, msg=lambda m: f"param {i}: {m}", **tol)
        s, r = ours.state.get(p, {}), ref.state.get(q, {})
        assert set(s) == set(r), f"param {i}: state keys {sorted(s)} != torch's {sorted(r)}"
        for key in r:
            a, b = s[key], r[key]
            if key == "step":
                # fastopt keeps CUDA step counters on the device, as torch's fused path does
                torch.testing.assert_close(a.cpu().double(), b.cpu().double(), msg=lambda m: f"param {i} step: {m}")
            else:
                torch.testing.assert_close(a, b, msg=lambda m: f"param {i} {key}: {m}", **tol)



# (fastopt class, torch class, config): every optimizer, with state that a
# wrong clip factor, a half-skipped step, a lost option or a wrongly started
# buffer would visibly change.
EVERY_OPTIMIZER: list[tuple[type, type, dict[str, Any]]] = [
    (fastopt.optim.Adam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}),
    (fastopt.optim.AdamW, torch.optim.AdamW, {"lr": 0.01, "amsgrad": True}),
    (fastopt.optim.SGD, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    (fastopt.optim.Adagrad, torch.optim.Adagrad, {"lr": 0.05}),
    (fastopt.optim.RMSprop, torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True}),
]
EVERY_OPTIMIZER_IDS = [o[0].__name__ for o in EVERY_OPTIMIZER]

STEPS = 10


def skip_bias_grad(i: int, step: int) -> bool:
    """The "bias" param gets no grad on steps 3 and 7: it must be left alone, and
    any per-parameter step counter or buffer must lag, as in torch."""
    return PARAM_SET[i][0] == "bias" and step in (3, 7)


def compare_with_torch(
    ours_cls, ref_cls, config: dict, device: str, dtype: torch.dtype, steps: int = STEPS, names=None, **tol
) -> None:
    """``steps`` steps of both on PARAM_SET (or its ``names``) with the same grads: same params and state."""
    ref_params = make_params(device, dtype, names)
    ours_params = clone_params(ref_params)
    ref = ref_cls(ref_params, foreach=False, **copy.deepcopy(config))
    ours = ours_cls(ours_params, **copy.deepcopy(config))
    grads = random_grads(ref_params, steps, skip_bias_grad)
    run_steps(ref, ref_params, grads)
    run_steps(ours, ours_params, grads)
    assert_same_state(ours, ref, ours_params, ref_params, **tol)


def check_low_precision(
    ours_cls,
    ref_cls,
    dtype: torch.dtype,
    device: str,
    config: dict,
    torch_kwargs: dict | None = None,
    steps: int = STEPS,
) -> None:
    """fastopt in 16-bit must be at most twice as far from a float32 run as torch in 16-bit.

    ``torch_kwargs`` picks torch's 16-bit path. The default, fused=True, is
    torch's most accurate path where it has one (Adagrad's is CPU-only): it computes in float32 like
    fastopt, while the for-loop path computes in 16-bit (and, for Adam, goes
    to NaN in float16 once eps=1e-8 underflows). Optimizers without a fused
    torch kernel (RMSprop) pass {"foreach": False}. The float32 reference
    always runs torch's for-loop.
    """
    fp32_params = make_params(device, torch.float32, ["non_aligned", "channels_last", "bias", "transposed"])
    torch_params = clone_params(fp32_params, dtype)
    ours_params = clone_params(fp32_params, dtype)
    grads = random_grads(fp32_params, steps)
    # Every run sees the same 16-bit-representable gradients, in their params'
    # layout, as autograd makes them (torch's CUDA fused kernels refuse others).
    grads = [[torch.empty_like(p).copy_(g.to(dtype)) for p, g in zip(fp32_params, step)] for step in grads]
    if torch_kwargs is None:
        if ref_cls is torch.optim.Adagrad and device != "cpu":
            torch_kwargs = {"foreach": False}  # torch's fused Adagrad is CPU-only
        elif ref_cls is torch.optim.SGD and device == "cpu":
            # torch's fused CPU SGD skips the update of every whole SIMD block
            # of a 16-bit param (pytorch/pytorch#191763, in torch 2.13 and
            # earlier): its large error would make this check vacuous.
            torch_kwargs = {"foreach": False}
        else:
            torch_kwargs = {"fused": True}
    run_steps(ref_cls(fp32_params, foreach=False, **config), fp32_params, grads)
    run_steps(ref_cls(torch_params, **torch_kwargs, **config), torch_params, grads)
    run_steps(ours_cls(ours_params, **config), ours_params, grads)
    for ref, theirs, ours in zip(fp32_params, torch_params, ours_params):
        torch_err = (theirs.float() - ref).abs().max()
        ours_err = (ours.float() - ref).abs().max()
        assert torch.isfinite(torch_err), "pick a config whose 16-bit torch run stays finite"
        assert ours_err <= 2 * torch_err, f"fastopt error {ours_err} > 2 x torch error {torch_err}"


def check_16bit_storage_float32_math(ours_cls, ref_cls, dtype: torch.dtype, device: str, config: dict, steps: int = STEPS) -> None:
    """Each fastopt step in 16-bit is float32 arithmetic on 16-bit storage, to one unit in the last place.

    Before every step the reference, torch's for-loop in float32, takes
    fastopt's 16-bit param and state; its float32 results, rounded to
    ``dtype``, are then what fastopt's loads, arithmetic and stores must give.
    Starting each step from the same values keeps one step's rounding flips
    from compounding in the next. The slack is one ulp of ``dtype`` at the
    larger of the reference value and the value before the step: a float32
    result can land on the other side of a 16-bit rounding boundary because
    of where the compiler fuses a multiply-add, and where an update nearly
    cancels the old value, float32 rounding of the operands shows at their
    scale, not the result's.
    """
    ours_params = clone_params(make_params(device, torch.float32, ["non_aligned", "channels_last", "bias"]), dtype)
    ref_params = clone_params(ours_params, torch.float32)
    ours = ours_cls(ours_params, **config)
    ref = ref_cls(ref_params, foreach=False, **config)
    finfo = torch.finfo(dtype)
    for step, grads in enumerate(random_grads(ref_params, steps)):
        grads = [g.to(dtype) for g in grads]
        with torch.no_grad():
            for p, q in zip(ours_params, ref_params):
                q.copy_(p)
                for key, value in ours.state.get(p, {}).items():
                    ref.state[q][key] = value.to(torch.float32 if value.is_floating_point() else value.dtype, copy=True)
        set_grads(ours_params, grads)
        set_grads(ref_params, grads)
        before = [{"param": p.detach().float(), **{k: v.float() for k, v in ours.state.get(p, {}).items()}} for p in ours_params]
        ours.step()
        ref.step()
        for i, (p, q) in enumerate(zip(ours_params, ref_params)):
            pairs = [("param", p, q)] + [(k, ours.state[p][k], v) for k, v in ref.state[q].items() if k != "step"]
            for name, a, b in pairs:
                b = b.to(dtype).float()
                scale = b.abs() if name not in before[i] else torch.maximum(b.abs(), before[i][name].abs())
                ulp = finfo.eps * torch.exp2(torch.floor(torch.log2(scale.clamp_min(finfo.smallest_normal))))
                excess = ((a.detach().float() - b).abs() - ulp).max().item()
                assert excess <= 0, f"step {step}, param {i} {name}: more than one {dtype} ulp from float32 math"


def assert_same_error(make_ref: Callable[[], Any], make_ours: Callable[[], Any]) -> None:
    """make_ours() raises torch's exception type with torch's message."""
    with pytest.raises(Exception) as expected:
        make_ref()
    with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
        make_ours()


def assert_same_functional_error(fn: Callable[..., Any], *args: Any) -> None:
    """fn(fastopt.nn.functional, *args) raises as fn(torch.nn.functional, *args) does."""
    assert_same_error(lambda: fn(torch.nn.functional, *args), lambda: fn(fastopt.nn.functional, *args))


def assert_same_validation_error(ours_cls, ref_cls, kwargs: dict) -> None:
    """Constructing with ``kwargs`` fails in fastopt exactly as in torch: type and message."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert_same_error(lambda: ref_cls(params, **kwargs), lambda: ours_cls(params, **kwargs))


def check_state_dict_round_trip(ours_cls, ref_cls, config: dict, direction: str, device: str) -> None:
    """Train 4 steps with one, save, load into the other, train 6 more: same as all-torch."""
    ref_params = make_params(device, torch.float32)
    ours_params = clone_params(ref_params)
    grads = random_grads(ref_params, STEPS, skip_bias_grad)
    ref = ref_cls(ref_params, foreach=False, **config)
    run_steps(ref, ref_params, grads)

    first_cls, second_cls = (ref_cls, ours_cls) if direction == "torch_to_fastopt" else (ours_cls, ref_cls)
    first = first_cls(ours_params, **config)
    run_steps(first, ours_params, grads[:4])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = second_cls(ours_params, **config)
    second.load_state_dict(torch.load(buffer))
    assert second.state_dict()["param_groups"] == first.state_dict()["param_groups"]
    run_steps(second, ours_params, grads[4:])
    assert_same_state(second, ref, ours_params, ref_params)


def check_grad_scale_and_found_inf(ours_cls, ref_cls, config: dict, device: str) -> None:
    """AMP's protocol: grads are unscaled in place, and found_inf skips the whole step."""
    params = make_params(device, torch.float32, ["non_aligned", "transposed", "bias"])
    ref_params = clone_params(params)
    grads = random_grads(params, 2)
    scale = torch.tensor(1024.0, device=device)
    ours = ours_cls(params, **config)
    ref = ref_cls(ref_params, foreach=False, **config)
    ours.grad_scale = scale

    for step_grads in grads:
        set_grads(params, [g * scale for g in step_grads])
        set_grads(ref_params, step_grads)
        ours.found_inf = torch.tensor(0.0, device=device)
        ours.step()
        ref.step()
        assert_same_state(ours, ref, params, ref_params)
        for p, g in zip(params, step_grads):
            torch.testing.assert_close(p.grad, g)  # unscaled in place

        # a skipped step changes nothing, step counters included
        check_skipped_step(ours, params, [g * scale for g in step_grads], device)


def check_skipped_step(opt: torch.optim.Optimizer, params, grads, device: str) -> None:
    """With found_inf set, a step leaves params, grads and every state entry as they were."""
    before = copy.deepcopy(opt.state_dict())
    values = [p.detach().clone() for p in params]
    set_grads(params, grads)
    opt.found_inf = torch.tensor(1.0, device=device)
    opt.step()
    opt.found_inf = torch.tensor(0.0, device=device)
    for p, v, g in zip(params, values, grads):
        assert torch.equal(p, v)
        assert torch.equal(p.grad, g.to(p.dtype))
    after = opt.state_dict()
    # (a parameter's first step may create its state: see SGD's skipped-first-step test)
    for i, s in before["state"].items():
        assert after["state"][i].keys() == s.keys(), i
        for k, v in s.items():
            assert torch.equal(after["state"][i][k], v), (i, k)


def check_update_ratios(ours_cls, config: dict, device: str) -> None:
    """update_ratios() equals ||p_after - p_before|| / ||p_before|| computed by torch."""
    params = make_params(device, torch.float32, ["non_aligned", "channels_last", "bias", "scalar"])
    opt = ours_cls(params, **config)
    opt.track_update_ratios()
    for step_grads in random_grads(params, 3):
        before = [p.detach().clone() for p in params]
        set_grads(params, step_grads)
        opt.step()
        ratios = opt.update_ratios()
        assert set(ratios) == set(params)
        for p, b in zip(params, before):
            expected = (p.detach().double() - b.double()).norm() / b.double().norm()
            # float32 params sum their squares in float32 SIMD lanes within
            # each 64K-element chunk (in registers, for speed), so the ratio is
            # good to about 1e-5, plenty for a health metric.
            torch.testing.assert_close(ratios[p], expected, rtol=1e-4, atol=0)


def _torch_adagrad_inits_late_groups() -> bool:
    """Whether torch's Adagrad creates the state of a group added by add_param_group (older releases raise KeyError)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))])
    opt.add_param_group({"params": [p]})
    p.grad = torch.ones(1)
    try:
        opt.step()
    except KeyError:
        return False
    return True


def check_lr_schedulers(ours_cls, ref_cls, config: dict, device: str) -> None:
    """Two param groups, add_param_group, and StepLR, CosineAnnealingLR and LambdaLR chained."""

    # A group added after construction gets its state lazily, on its first
    # step; torch's Adagrad does that only in newer releases.
    late_group = ref_cls is not torch.optim.Adagrad or _torch_adagrad_inits_late_groups()

    def build(cls, params, **kw):
        groups = [{"params": params[:2]}, {"params": params[2:4] if late_group else params[2:], "lr": 0.03, "weight_decay": 0.2}]
        opt = cls(groups, lr=0.01, **config, **kw)
        if late_group:
            opt.add_param_group({"params": params[4:], "lr": 0.02})
        scheds = [
            torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS),
            torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch)),
        ]
        return opt, scheds

    ref_params = make_params(device, torch.float32)
    ours_params = clone_params(ref_params)
    ref, ref_scheds = build(ref_cls, ref_params, foreach=False)
    ours, ours_scheds = build(ours_cls, ours_params)
    grads = random_grads(ref_params, STEPS)
    for step, step_grads in enumerate(grads):
        for opt, scheds, params in ((ref, ref_scheds, ref_params), (ours, ours_scheds, ours_params)):
            set_grads(params, step_grads)
            opt.step()
            for sched in scheds:
                sched.step()
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in ref.param_groups]
    assert_same_state(ours, ref, ours_params, ref_params)


def check_closure(ours_cls, ref_cls, config: dict, device: str) -> None:
    """step(closure) evaluates the closure with grad enabled and returns its loss."""
    torch.manual_seed(1)
    x = torch.randn(32, 5, device=device)
    y = torch.randn(32, 1, device=device)
    results = []
    for cls in (ref_cls, ours_cls):
        model = torch.nn.Linear(5, 1).to(device)
        torch.nn.init.constant_(model.weight, 0.1)
        torch.nn.init.zeros_(model.bias)
        kw = {"foreach": False} if cls is ref_cls else {}
        opt = cls(model.parameters(), **config, **kw)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses = [opt.step(closure).item() for _ in range(5)]
        results.append((losses, model.weight.detach().clone()))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1])


def check_complex_params(ours_cls, ref_cls, config: dict, device: str) -> None:
    """Complex params are updated as pairs of reals, as torch.optim does."""
    ref_params = [torch.nn.Parameter(torch.randn(33, dtype=torch.complex64, device=device))]
    ours_params = clone_params(ref_params)
    grads = random_grads(ref_params, 5)
    ref = ref_cls(ref_params, foreach=False, **config)
    ours = ours_cls(ours_params, **config)
    run_steps(ref, ref_params, grads)
    run_steps(ours, ours_params, grads)
    assert_same_state(ours, ref, ours_params, ref_params)
