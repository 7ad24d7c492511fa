"""Gradient clipping, non-finite skipping, master weights and stochastic rounding.

Every fastopt optimizer takes ``max_grad_norm``, ``skip_nonfinite``,
``master_weights`` and ``stochastic_rounding``; these tests check each against
torch (clip-then-step, a run without the skipped steps) or against a float32
or float64 reference.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch

from fastopt.optim import SGD, Adam, clip_grad_norm_, grad_norm

from .reference import (
    EVERY_OPTIMIZER,
    EVERY_OPTIMIZER_IDS,
    assert_same_state,
    check_16bit_storage_float32_math,
    clone_params,
    make_params,
    random_grads,
    set_grads,
    skip_bias_grad,
)

from ..cpu_isa import cpu_capability, supported_isas

OPTIMIZERS, OPT_IDS = EVERY_OPTIMIZER, EVERY_OPTIMIZER_IDS


# --------------------------------------------------------------------------- grad_norm op


def _reference_norm(grads: list[torch.Tensor], p: float) -> torch.Tensor:
    """The global norm in float64, as torch defines it (norm of the per-tensor norms)."""
    # (torch refuses the inf norms of empty tensors; they contribute nothing)
    norms = [torch.linalg.vector_norm(g.double(), p) for g in grads if g.numel() > 0]
    return torch.linalg.vector_norm(torch.stack(norms), p)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("ours_cls", "ref_cls", "config"), EVERY_OPTIMIZER, ids=EVERY_OPTIMIZER_IDS)
def test_16bit_params_get_float32_math(ours_cls, ref_cls, config, dtype, device):
    """A 16-bit step loads, computes in float32 and rounds once per store, unlike torch's for-loop and foreach paths."""
    check_16bit_storage_float32_math(ours_cls, ref_cls, dtype, device, config)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, 0.5, math.inf, -math.inf, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_grad_norm_matches_float64(device, norm_type, dtype):
    grads = [p.detach() for p in make_params(device, dtype)]
    grads = [g for g in grads if g.numel() > 0] + [torch.zeros(0, device=device, dtype=dtype)]
    total, nonfinite = grad_norm(grads, norm_type)
    expected = _reference_norm(grads, norm_type)
    assert total.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert total.device.type == device and total.dim() == 0
    # float32 lanes summing ~1M squares drift by ~1e-6 relative; float64 is exact to 1e-12.
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(total.double(), expected, rtol=rtol, atol=0)
    assert nonfinite.item() == 0.0
    # At least as close to the exact value as torch's own get_total_norm (which
    # sums float32 in float32 per tensor; ours sums 64K-element runs in SIMD
    # lanes and the runs in float64, so it is usually far closer).
    if dtype in (torch.float32, torch.float64) and norm_type != 0.0:
        ref = torch.nn.utils.get_total_norm([g for g in grads if g.numel() > 0], norm_type).double()
        assert (total.double() - expected).abs() <= (ref - expected).abs() + 1e-7 * expected


def test_grad_norm_mixed_dtypes(device):
    grads = [torch.randn(1000, device=device), torch.randn(333, device=device, dtype=torch.bfloat16)]
    total, _ = grad_norm(grads)
    torch.testing.assert_close(total.double(), _reference_norm(grads, 2.0), rtol=1e-6, atol=0)
    grads.append(torch.randn(5, device=device, dtype=torch.float64))
    assert grad_norm(grads)[0].dtype == torch.float64


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("where", [0, 70000, 1000002], ids=["first", "middle_chunk", "tail"])
def test_grad_norm_nonfinite_flag(device, bad, where):
    grads = [torch.randn(1000003, device=device), torch.randn(17, device=device)]
    grads[0][where] = bad
    total, nonfinite = grad_norm(grads)
    assert nonfinite.item() == 1.0
    assert not torch.isfinite(total)



@pytest.mark.parametrize("where", [0, 70000, 1000002], ids=["first", "middle_chunk", "tail"])
def test_grad_norm_neg_inf_sees_signed_zero_and_nan(device, where):
    """The -inf norm is min |x|: -0.0 counts as 0, and a NaN anywhere makes it NaN.

    Large enough for many CUDA blocks, whose minima are combined by bits:
    a sign bit or a NaN must not be lost there (-0.0's bits sort above every
    positive double, and NaN's above +inf).
    """
    grads = [torch.rand(1000003, device=device) + 0.5, torch.rand(17, device=device) + 0.5]
    grads[0][where] = -0.0
    total, nonfinite = grad_norm(grads, -math.inf)
    assert total.item() == 0.0 and nonfinite.item() == 0.0
    grads[0][where] = 0.75
    grads[1][3] = math.nan
    total, nonfinite = grad_norm(grads, -math.inf)
    assert math.isnan(total.item()) and nonfinite.item() == 1.0

def test_grad_norm_overflow_is_not_nonfinite(device):
    """A norm that overflows float32 from finite gradients is not an inf/NaN gradient."""
    grads = [torch.full((64,), 3e38, device=device)]
    total, nonfinite = grad_norm(grads)
    assert nonfinite.item() == 0.0
    assert torch.isinf(total)


def test_grad_norm_empty_list_and_errors(device):
    total, nonfinite = grad_norm([])
    assert total.item() == 0.0 and nonfinite.item() == 0.0
    with pytest.raises(TypeError, match="real floating point"):
        torch.ops.fastopt.grad_norm([torch.zeros(3, dtype=torch.int64, device=device)], 2.0)
    with pytest.raises(RuntimeError, match="norm_type must not be NaN"):
        torch.ops.fastopt.grad_norm([torch.zeros(3, device=device)], math.nan)


def test_grad_norm_opcheck(device):
    grads = [torch.randn(s, device=device) for s in [(), (0,), (7,), (130, 3)]]
    torch.library.opcheck(torch.ops.fastopt.grad_norm.default, (grads, 2.0))


# --------------------------------------------------------------------------- clip_grad_norm_


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "no_clip"])
def test_clip_grad_norm_matches_torch(device, norm_type, max_norm):
    # torch refuses the inf norm of an empty gradient, so leave that one out
    params = [p for p in make_params(device, torch.float32) if p.numel() > 0]
    ref_params = clone_params(params)
    for grads in random_grads(params, 1):
        set_grads(params, grads)
        set_grads(ref_params, grads)
    exact = torch.linalg.vector_norm(torch.cat([p.grad.double().flatten() for p in params]), norm_type)
    ours = clip_grad_norm_(params, max_norm, norm_type)
    ref = torch.nn.utils.clip_grad_norm_(ref_params, max_norm, norm_type)
    assert ours.dtype == ref.dtype
    # torch sums each float32 tensor in float32: over the million-element
    # gradients its L1 norm is off by about 2e-5. Ours is the float64 norm
    # rounded once, so it is held to that, and to be no worse than torch's.
    torch.testing.assert_close(ours.double(), exact, rtol=2e-7, atol=0)
    assert abs(ours.double() - exact) <= abs(ref.double() - exact) + 1e-7 * exact
    # The clipped gradients: the float64 ones scaled by the exact coefficient.
    coef = min(1.0, max_norm / (exact.item() + 1e-6))
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad.double(), g.double() * coef, rtol=1e-6, atol=0)


def test_clip_grad_norm_warns_of_an_empty_generator_as_torch():
    for clip in (torch.nn.utils.clip_grad_norm_, clip_grad_norm_):
        with pytest.warns(UserWarning, match="`parameters` is an empty generator, no gradient clipping"):
            assert clip((p for p in []), 1.0).item() == 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            clip([], 1.0)  # a list, even empty, is no slip


def test_clip_grad_norm_nonfinite(device):
    p = torch.nn.Parameter(torch.zeros(10, device=device))
    p.grad = torch.ones(10, device=device)
    p.grad[3] = math.nan
    found_inf = torch.zeros((), device=device)
    clip_grad_norm_([p], 1.0, found_inf=found_inf)
    assert found_inf.item() == 1.0
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    # no gradients at all: torch returns a zero norm
    assert clip_grad_norm_([torch.nn.Parameter(torch.zeros(2))], 1.0).item() == 0.0


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, 0.5, math.inf, -math.inf, 0.0])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_clip_grad_norm_complex_matches_torch(device, norm_type, dtype):
    """Complex gradients beside a real one, for every norm type: torch's norm (that of
    the elements' moduli, not of their (re, im) pairs unless p = 2) and clipped gradients."""
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    params = [
        torch.nn.Parameter(torch.randn(1000, dtype=dtype, device=device)),
        torch.nn.Parameter(torch.randn(5, 3, dtype=dtype, device=device).t()),  # transposed
        torch.nn.Parameter(torch.randn(17, dtype=real, device=device)),
    ]
    ref_params = clone_params(params)
    set_grads(params, [torch.randn_like(p) for p in params])
    set_grads(ref_params, [p.grad for p in params])
    ours = clip_grad_norm_(params, 0.5, norm_type)
    ref = torch.nn.utils.clip_grad_norm_(ref_params, 0.5, norm_type)
    assert ours.dtype == ref.dtype and ours.device == ref.device
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf, -math.inf, 0.0])
def test_grad_norm_of_no_elements_is_zero(device, norm_type):
    """No gradients, or only empty ones: norm 0 for every p (min |x| too, whose
    reduction starts from +inf), as torch's clip_grad_norm_ returns for none."""
    for grads in ([], [torch.empty(0, device=device), torch.empty(3, 0, device=device)]):
        total, nonfinite = grad_norm(grads, norm_type)
        assert total.item() == 0.0 and nonfinite.item() == 0.0


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, -math.inf, 0.0])
def test_grad_norm_complex_nonfinite_flag(device, norm_type):
    """A complex element with an inf or NaN part is flagged, whatever the norm type."""
    for bad in [complex(math.inf, 0.0), complex(1.0, math.nan)]:
        grads = [torch.randn(100, dtype=torch.complex64, device=device), torch.randn(7, device=device)]
        assert grad_norm(grads, norm_type)[1].item() == 0.0
        grads[0][42] = bad
        assert grad_norm(grads, norm_type)[1].item() == 1.0


# --------------------------------------------------------------------------- max_grad_norm


def _scaled_grads(params, steps: int, skip=lambda i, s: False):
    # Norms between ~0.1 and ~100 x max_grad_norm, so some steps clip and some do not.
    grads = random_grads(params, steps, skip)
    scales = [0.001, 1.0, 0.0001, 3.0, 0.01, 0.5, 2.0, 0.0002, 1.0, 0.05]
    return [[None if g is None else g * scales[s % len(scales)] for g in step] for s, step in enumerate(grads)]


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_max_grad_norm_equals_clip_then_step(opt, dtype, device):
    ours_cls, ref_cls, config = opt
    max_norm = 1.0
    ref_params = make_params(device, dtype)
    ours_params = clone_params(ref_params)
    ref = ref_cls(ref_params, foreach=False, **config)
    ours = ours_cls(ours_params, max_grad_norm=max_norm, **config)
    clipped = 0
    for grads in _scaled_grads(ref_params, 10, skip_bias_grad):
        set_grads(ref_params, grads)
        if dtype == torch.float64:
            norm = torch.nn.utils.clip_grad_norm_(ref_params, max_norm)
        else:
            # torch's float32 norm is ~1e-5 off the exact one (ours is closer, see
            # test_grad_norm_matches_float64), and Adam's and centered RMSprop's
            # divisions amplify that in elements whose update nearly cancels. So
            # in float32 torch clips by the factor of our norm, which tests that
            # the kernels apply it exactly; float64 tests torch's whole recipe.
            norm = grad_norm([p.grad for p in ref_params if p.grad is not None])[0]
            torch._foreach_mul_([p.grad for p in ref_params if p.grad is not None], (max_norm / (norm + 1e-6)).clamp(max=1.0))
        clipped += bool(norm > max_norm)
        ref.step()
        set_grads(ours_params, grads)
        ours.step()
        torch.testing.assert_close(ours.last_grad_norm, norm.to(ours.last_grad_norm.dtype), rtol=1e-6, atol=0)
    assert 0 < clipped < 10, "the grads should clip on some steps only"
    # The kernels divide by 1 / coef where torch multiplies by coef: one more
    # rounding of the factor, so a few ulps rather than bit for bit.
    tol = {} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    assert_same_state(ours, ref, ours_params, ref_params, **tol)
    # the gradients are left clipped, as torch's clip_grad_norm_ leaves them
    for p, q in zip(ours_params, ref_params):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, **tol)


def test_max_grad_norm_with_grad_scaler_protocol(device):
    """AMP's grad_scale/found_inf and clipping together: unscale, clip, step."""
    ref_params = make_params(device, torch.float32, ["non_aligned", "bias"])
    ours_params = clone_params(ref_params)
    ref = torch.optim.Adam(ref_params, foreach=False)
    ours = Adam(ours_params, max_grad_norm=0.5)
    scale = torch.tensor(512.0, device=device)
    for grads in random_grads(ref_params, 3):
        set_grads(ref_params, grads)
        torch.nn.utils.clip_grad_norm_(ref_params, 0.5)
        ref.step()
        set_grads(ours_params, [g * scale for g in grads])
        ours.grad_scale, ours.found_inf = scale, torch.tensor(0.0, device=device)
        ours.step()
    assert_same_state(ours, ref, ours_params, ref_params, rtol=1e-5, atol=1e-6)


def test_max_grad_norm_validation():
    p = [torch.nn.Parameter(torch.zeros(2))]
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="max_grad_norm"):
            Adam(p, max_grad_norm=bad)


# --------------------------------------------------------------------------- skip_nonfinite


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
def test_skip_nonfinite_equals_run_without_those_steps(opt, device):
    """inf on the very first step and NaN later: as if those steps never happened."""
    ours_cls, ref_cls, config = opt
    ref_params = make_params(device, torch.float32)
    ours_params = clone_params(ref_params)
    ref = ref_cls(ref_params, foreach=False, **config)
    ours = ours_cls(ours_params, skip_nonfinite=True, **config)
    grads = random_grads(ref_params, 8)
    bad_steps = {0: math.inf, 5: math.nan}
    for s, step_grads in enumerate(grads):
        if s in bad_steps:
            poisoned = [g.clone() for g in step_grads]
            poisoned[2].view(-1)[7] = bad_steps[s]  # one element of one tensor
            set_grads(ours_params, poisoned)
            before = [p.detach().clone() for p in ours_params]
            ours.step()
            for p, b in zip(ours_params, before):
                assert torch.equal(p, b)
            if s == 0:
                # the skipped first step leaves initialised (zero) state, step counts at 0
                for p in ours_params:
                    for k, v in ours.state[p].items():
                        assert torch.isfinite(v).all(), k
                        if k == "step":
                            assert v.item() == 0
            continue
        set_grads(ref_params, step_grads)
        ref.step()
        set_grads(ours_params, step_grads)
        ours.step()
    assert ours.skipped_steps.item() == 2
    assert ours.skipped_steps.device.type == device
    if ours_cls is SGD:
        # torch starts a momentum buffer at the first real gradient; fastopt
        # starts it at zero when the first step is skipped (see SGD's docstring),
        # which with dampening=0 gives the same buffer.
        pass
    assert_same_state(ours, ref, ours_params, ref_params)


def test_skip_nonfinite_with_amp_found_inf(device):
    params = make_params(device, torch.float32, ["non_aligned", "bias"])
    opt = Adam(params, skip_nonfinite=True)
    scale = torch.tensor(64.0, device=device)
    for found, poison in [(0.0, False), (1.0, False), (0.0, True), (0.0, False)]:
        grads = [torch.randn_like(p) * scale for p in params]
        if poison:
            grads[0][0] = math.inf
        set_grads(params, grads)
        opt.grad_scale, opt.found_inf = scale, torch.tensor(found, device=device)
        before = [p.detach().clone() for p in params]
        opt.step()
        changed = any(not torch.equal(p, b) for p, b in zip(params, before))
        assert changed == (found == 0.0 and not poison)
    assert opt.skipped_steps.item() == 2
    assert opt.state[params[0]]["step"].item() == 2


def test_skip_nonfinite_works_with_grad_scaler(device):
    """torch.amp.GradScaler drives a skip_nonfinite optimizer as any fused one."""
    if device == "cpu" and not hasattr(torch.amp, "GradScaler"):
        pytest.skip("no torch.amp.GradScaler")
    model = torch.nn.Linear(8, 4).to(device)
    opt = Adam(model.parameters(), lr=0.1, skip_nonfinite=True, max_grad_norm=1.0)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    x = torch.randn(16, 8, device=device)
    for _ in range(3):
        opt.zero_grad()
        scaler.scale(model(x).square().mean()).backward()
        scaler.step(opt)
        scaler.update()
    assert opt.state[model.weight]["step"].item() == 3
    assert opt.skipped_steps.item() == 0


# --------------------------------------------------------------------------- master weights


def _regression_run(dtype: torch.dtype, steps: int, device: str, **opt_kwargs):
    """Adam on least squares; the model (and its gradient) runs on the stored params."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 64, generator=gen).to(device)
    w_true = torch.randn(64, 1, generator=gen).to(device)
    y = x @ w_true
    w = torch.nn.Parameter(torch.randn(64, 1, generator=gen).to(device, dtype))
    opt = Adam([w], lr=1e-3, **opt_kwargs)
    for _ in range(steps):
        w32 = w.detach().float()
        w.grad = (x.t() @ (x @ w32 - y) / x.shape[0]).to(dtype)
        opt.step()
    return w, opt


def test_master_weights_track_float32(device):
    ref, _ = _regression_run(torch.float32, 100, device)
    plain, _ = _regression_run(torch.bfloat16, 100, device)
    mixed, opt = _regression_run(torch.bfloat16, 100, device, master_weights=True)
    master = opt.state[mixed]["master_param"]
    assert master.dtype == torch.float32
    assert opt.state[mixed]["exp_avg"].dtype == torch.float32
    assert opt.state[mixed]["exp_avg_sq"].dtype == torch.float32
    # The parameter is its master rounded to bfloat16, exactly.
    assert torch.equal(mixed.detach(), master.to(torch.bfloat16))
    # Within bf16 rounding of the float32 trajectory. The model, and so the
    # gradient, sees the bf16-rounded weights, which moves the trajectory by
    # a few roundings over 100 steps: at most 4 bf16 ulps (2^-7 relative)
    # anywhere, and under one on average.
    ulp = ref.detach().abs().clamp_min(2.0**-10) * 2.0**-7
    err_master = (master - ref.detach()).abs()
    assert (err_master <= 4 * ulp).all(), (err_master / ulp).max()
    assert (err_master / ulp).mean() < 1.0, (err_master / ulp).mean()
    assert ((mixed.detach().float() - ref.detach()).abs() <= 5 * ulp).all()
    # ... and measurably better than plain bf16 Adam, whose small updates round away.
    err_plain = (plain.detach().float() - ref.detach()).abs().mean()
    assert err_master.mean() * 4 < err_plain, (err_master.mean(), err_plain)


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=OPT_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_master_weights_equal_float32_run(opt, dtype, device):
    """With the same gradients, the masters follow a float32 run exactly."""
    ours_cls, ref_cls, config = opt
    names = ["scalar", "non_aligned", "transposed", "strided", "channels_last", "bias"]
    ref_params = make_params(device, torch.float32, names)
    ref_params = clone_params([p.detach().to(dtype) for p in ref_params], torch.float32)
    ours_params = clone_params(ref_params, dtype)
    ref = ref_cls(ref_params, foreach=False, **config)
    ours = ours_cls(ours_params, master_weights=True, **config)
    grads = [[g.to(dtype) for g in step] for step in random_grads(ref_params, 6)]
    for step_grads in grads:
        set_grads(ref_params, [g.float() for g in step_grads])
        ref.step()
        set_grads(ours_params, step_grads)
        ours.step()
    for i, (p, q) in enumerate(zip(ours_params, ref_params)):
        state = ours.state[p]
        torch.testing.assert_close(state["master_param"], q.detach())
        assert p.dtype == dtype and p.stride() == q.stride()
        # The parameter is its master rounded, exactly. Next to the float32
        # run's rounded value it can differ by one 16-bit step where the two
        # masters (equal to ~1e-7) straddle a rounding boundary: rarely.
        assert torch.equal(p.detach(), state["master_param"].to(dtype))
        rounded = q.detach().to(dtype)
        step = (rounded.float().abs() * torch.finfo(dtype).eps).clamp_min(torch.finfo(dtype).tiny)
        # Plus the masters' own float32 difference: rounding two values moves
        # them apart by at most that and a step. It matters near zero, where a
        # float32 rounding is more than a relative 16-bit step (on CUDA the
        # kernels fuse multiply-adds that torch's for-loop rounds twice).
        master_diff = (state["master_param"] - q.detach()).abs()
        assert ((p.detach().float() - rounded.float()).abs() <= step + master_diff).all()
        assert (p.detach() != rounded).sum() <= 2 + 1e-4 * p.numel()
        for key, value in ref.state[q].items():
            if key != "step":
                assert state[key].dtype == torch.float32, key
                torch.testing.assert_close(state[key], value)


def test_master_weights_leave_float32_params_alone(device):
    p32 = torch.nn.Parameter(torch.randn(10, device=device))
    p16 = torch.nn.Parameter(torch.randn(10, device=device, dtype=torch.bfloat16))
    opt = Adam([p32, p16], master_weights=True)
    set_grads([p32, p16], [torch.randn(10, device=device), torch.randn(10, device=device)])
    opt.step()
    assert "master_param" not in opt.state[p32]
    assert "master_param" in opt.state[p16]


def test_master_weights_survive_save_and_load(device):
    params = make_params(device, torch.bfloat16, ["non_aligned", "bias", "channels_last"])
    other = clone_params(params)
    grads = random_grads(params, 8)
    straight = Adam(params, lr=1e-3, master_weights=True)
    for step_grads in grads:
        set_grads(params, step_grads)
        straight.step()

    first = Adam(other, lr=1e-3, master_weights=True)
    for step_grads in grads[:4]:
        set_grads(other, step_grads)
        first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = Adam(other, lr=1e-3, master_weights=True)
    second.load_state_dict(torch.load(buffer))
    for p in other:
        assert second.state[p]["master_param"].dtype == torch.float32
        assert torch.equal(second.state[p]["master_param"], first.state[p]["master_param"])
        assert second.state[p]["exp_avg"].dtype == torch.float32
    for step_grads in grads[4:]:
        set_grads(other, step_grads)
        second.step()
    for p, q in zip(other, params):
        assert torch.equal(p, q)
        assert torch.equal(second.state[p]["master_param"], straight.state[q]["master_param"])


def test_torch_state_dict_creates_masters(device):
    params = make_params(device, torch.bfloat16, ["non_aligned", "bias"])
    torch_opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    for step_grads in random_grads(params, 2):
        set_grads(params, step_grads)
        torch_opt.step()
    ours = Adam(params, lr=1e-3, master_weights=True)
    ours.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    set_grads(params, random_grads(params, 1)[0])
    before = [p.detach().clone() for p in params]
    ours.step()
    for p, b in zip(params, before):
        st = ours.state[p]
        assert st["master_param"].dtype == torch.float32
        assert st["exp_avg"].dtype == torch.float32 and st["exp_avg_sq"].dtype == torch.float32
        assert st["step"].item() == 3
        assert not torch.equal(p, b)
    # and back: torch loads fastopt's state_dict, ignoring the masters
    torch.optim.Adam(params, lr=1e-3).load_state_dict(ours.state_dict())


def test_master_weights_op_errors(device):
    f32 = [torch.zeros(4, device=device)]
    bf = [torch.zeros(4, device=device, dtype=torch.bfloat16)]
    steps = [torch.tensor(0.0, device=device)]
    kw = dict(lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, eps=1e-8, amsgrad=False,
              maximize=False, decoupled_weight_decay=False)  # fmt: skip
    with pytest.raises(TypeError, match="float32 masters"):
        torch.ops.fastopt.adam_(bf, bf, bf, bf, [], steps, param_copies=bf, **kw)
    with pytest.raises(TypeError, match="grads must have the copies' dtype"):
        torch.ops.fastopt.adam_(f32, f32, f32, f32, [], steps, param_copies=bf, **kw)
    with pytest.raises(RuntimeError, match="param_copies has 2 tensors"):
        torch.ops.fastopt.adam_(f32, bf, f32, f32, [], steps, param_copies=bf * 2, **kw)


# --------------------------------------------------------------------------- stochastic rounding


def test_stochastic_rounding_is_unbiased(device):
    """Updates of a quarter bf16 ulp: round to nearest loses them all, SR keeps them on average."""
    n = 1 << 18
    ulp = 2.0**-7  # bf16 spacing in [1, 2)
    lr = 0.25 * ulp
    steps = 8
    results = {}
    for sr in (False, True):
        p = torch.nn.Parameter(torch.ones(n, device=device, dtype=torch.bfloat16))
        opt = SGD([p], lr=lr, stochastic_rounding=sr)
        for _ in range(steps):
            p.grad = -torch.ones_like(p)
            opt.step()
        results[sr] = p.detach().double()
    assert torch.equal(results[False], torch.ones(n, dtype=torch.float64, device=device))
    # Each element is a sum of independent steps; its expected value is exact.
    expected = 1.0 + steps * lr
    mean = results[True].mean().item()
    # Per step the rounding error has variance <= ulp^2 / 4; over `steps` steps
    # and n elements the mean's standard deviation is below ulp * sqrt(steps / (4 n)).
    sigma = ulp * math.sqrt(steps / (4 * n))
    assert abs(mean - expected) < 5 * sigma, (mean, expected, sigma)
    # each step moves an element by 0 or 1 ulp: never down, never past `steps` ulps
    assert ((results[True] >= 1.0) & (results[True] <= 1.0 + steps * ulp)).all()


def test_stochastic_rounding_single_step_probability(device):
    """One step of 0.3 ulp rounds up in 30% of elements, within 5 sigma, in every chunk position."""
    n = 1_000_003  # a SIMD tail and several 64K chunks
    ulp = 2.0**-7
    p = torch.nn.Parameter(torch.ones(n, device=device, dtype=torch.bfloat16))
    opt = SGD([p], lr=0.3 * ulp, stochastic_rounding=True)
    p.grad = -torch.ones_like(p)
    opt.step()
    up = (p.detach() > 1).double()
    assert set(p.detach().unique().tolist()) <= {1.0, 1.0 + ulp}
    sigma = math.sqrt(0.3 * 0.7 / n)
    assert abs(up.mean().item() - 0.3) < 5 * sigma
    # no position-dependent bias: the tail and each quarter of the tensor agree
    for part in (up[: n // 4], up[-n // 4 :], up[-13:].repeat(1000)):
        assert abs(part.mean().item() - 0.3) < 5 * math.sqrt(0.21 / part.numel()) + 0.05 * (part.numel() < 20000)


def test_stochastic_rounding_reproducible(device):
    def run():
        torch.manual_seed(5)
        p = torch.nn.Parameter(torch.randn(5000, device=device, dtype=torch.bfloat16))
        opt = Adam([p], lr=1e-4, stochastic_rounding=True)
        for _ in range(3):
            p.grad = torch.randn_like(p)
            opt.step()
        return p.detach().clone()

    assert torch.equal(run(), run())


def test_stochastic_rounding_with_master_weights(device):
    """SR applies to the rounded copy; the master stays exact."""
    p = torch.nn.Parameter(torch.ones(1 << 16, device=device, dtype=torch.bfloat16))
    opt = SGD([p], lr=0.25 * 2.0**-7, master_weights=True, stochastic_rounding=True)
    p.grad = -torch.ones_like(p)
    opt.step()
    master = opt.state[p]["master_param"]
    assert torch.equal(master, torch.full_like(master, 1.0 + 0.25 * 2.0**-7))
    frac = (p.detach() > 1).double().mean().item()
    assert abs(frac - 0.25) < 0.02


def test_stochastic_rounding_rejects_float16():
    with pytest.raises(ValueError, match="bfloat16"):
        Adam([torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))], stochastic_rounding=True)


def test_stochastic_rounding_rejects_float16_in_add_param_group():
    """add_param_group applies the constructor's check, and a refused group leaves the optimizer as it was."""
    opt = Adam([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))], stochastic_rounding=True)
    with pytest.raises(ValueError, match="stochastic_rounding supports bfloat16"):
        opt.add_param_group({"params": (p for p in [torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))])})
    assert len(opt.param_groups) == 1
    group = {"params": (p for p in [torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))])}
    opt.add_param_group(group)
    assert [p.numel() for p in opt.param_groups[1]["params"]] == [3]
    assert opt.param_groups[1] is group  # the caller's dict is the group, as in torch


def test_stochastic_rounding_keeps_nan_and_inf(device):
    p = torch.nn.Parameter(torch.tensor([math.nan, math.inf, -math.inf, 1.0] * 20, device=device, dtype=torch.bfloat16))
    opt = SGD([p], lr=0.001, stochastic_rounding=True)
    p.grad = torch.ones_like(p)
    opt.step()
    v = p.detach().view(20, 4)
    assert v[:, 0].isnan().all()
    assert (v[:, 1] == math.inf).all() and (v[:, 2] == -math.inf).all()


# --------------------------------------------------------------------------- opcheck


def test_opcheck_master_weights_and_rounding(device):
    # a 0-dim tensor, an empty one (skipped by the kernels), a tail-only one and a 2-D one
    shapes = [(), (0,), (7,), (130, 3)]
    masters = [torch.randn(s, device=device) for s in shapes]
    copies = [m.to(torch.bfloat16) for m in masters]
    grads = [torch.randn(s, device=device, dtype=torch.bfloat16) for s in shapes]
    state = [[torch.rand(s, device=device) for s in shapes] for _ in range(2)]
    steps = [torch.tensor(2.0, device=device) for _ in shapes]
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=False,
              maximize=False, decoupled_weight_decay=True)  # fmt: skip
    # The seed where fastopt.optim draws it: on the params' device.
    seed = torch.tensor([123, 456], dtype=torch.int64, device=device)
    hparams = torch.tensor([[1e-3, 0.9, 0.999, 0.01, 1e-8]] * len(shapes), dtype=torch.float64, device=device)
    torch.library.opcheck(
        torch.ops.fastopt.adam_.default,
        (masters, grads, *state, [], steps),
        dict(param_copies=copies, rounding_seed=seed, hparams=hparams, **kw),
    )
    bf = [torch.randn(s, device=device, dtype=torch.bfloat16) for s in shapes]
    torch.library.opcheck(
        torch.ops.fastopt.sgd_.default,
        (bf, [torch.randn(s, device=device, dtype=torch.bfloat16) for s in shapes], []),
        dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False,
             is_first_step=False, rounding_seed=seed),  # fmt: skip
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares the CPU and CUDA kernels")
@pytest.mark.parametrize("master", [False, True], ids=["bf16_params", "bf16_copies"])
def test_stochastic_rounding_same_stream_on_cpu_and_cuda(master):
    """The rounding word of an element depends on (seed, tensor index, element
    index) only (NOTE: [rounding stream]), not on the CUDA launch geometry or
    the CPU's SIMD blocks: with the same seed both backends store the same
    bits. Gradients of +-1 make lr * grad exact, so the float update is the
    same with or without FMA contraction and any difference would come from
    the rounding."""
    torch.manual_seed(4)
    # several tensors (the tensor index enters the stream), a tail, several 64K chunks
    values = [torch.randn(70001, dtype=torch.bfloat16), torch.randn(333, dtype=torch.bfloat16),
              torch.randn(130, 3, dtype=torch.bfloat16)]  # fmt: skip
    grads = [torch.randint(0, 2, v.shape).to(torch.bfloat16) * 2 - 1 for v in values]
    seed = torch.tensor([0x1234_5678_9ABC, 77], dtype=torch.int64)
    kw = dict(lr=2.0**-9, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False, is_first_step=False)  # fmt: skip
    # Where each tensor starts in its storage, in elements: the misaligned
    # ones take the CUDA element path, beside aligned grads (and masters).
    offsets = [1, 0, 0]

    def placed(t, device, offset):
        buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=device)
        return buf[offset:].view(t.shape).copy_(t)

    results = []
    for device in ("cpu", "cuda"):
        copies = [placed(v, device, k) for v, k in zip(values, offsets)]
        g = [placed(x, device, 1 - k) for x, k in zip(grads, offsets)]
        if master:
            params = [placed(c.float(), device, k) for c, k in zip(copies, offsets[::-1])]
            torch.ops.fastopt.sgd_(params, g, [], param_copies=copies, rounding_seed=seed.to(device), **kw)
        else:
            params = copies
            torch.ops.fastopt.sgd_(params, g, [], rounding_seed=seed.to(device), **kw)
        results.append([c.cpu() for c in copies])
    for cpu_result, cuda_result in zip(*results):
        assert torch.equal(cpu_result, cuda_result)



def test_stochastic_rounding_same_stream_on_every_kernel_variant():
    """The baseline kernel rounds element by element, the SIMD ones in blocks of
    Philox lanes: both must read the same word per element (NOTE: [rounding
    stream]), so a run does not depend on the CPU it ran on."""
    results = []
    for isa in supported_isas():
        with cpu_capability(isa):
            torch.manual_seed(3)
            # a tail, several chunks, and a master-weights copy as well
            p = torch.nn.Parameter(torch.randn(70001, dtype=torch.bfloat16))
            q = torch.nn.Parameter(torch.randn(333, dtype=torch.bfloat16))
            # plain SGD: its float update rounds alike in every variant, so any
            # difference would come from the rounding stream
            opt = SGD([p], lr=1e-3, stochastic_rounding=True)
            opt_m = SGD([q], lr=1e-3, stochastic_rounding=True, master_weights=True)
            for _ in range(2):
                p.grad = torch.randn_like(p)
                q.grad = torch.randn_like(q)
                opt.step()
                opt_m.step()
            results.append((p.detach().clone(), q.detach().clone()))
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0])
        assert torch.equal(other[1], results[0][1])


@pytest.mark.parametrize(("ours_cls", "ref_cls", "config"), EVERY_OPTIMIZER, ids=EVERY_OPTIMIZER_IDS)
def test_state_dict_has_torchs_keys_unless_skip_nonfinite(ours_cls, ref_cls, config, device):
    """Without fastopt-only options the state_dict has exactly torch's keys; a failed load keeps the skip count."""
    params = make_params(device, torch.float32, ["bias"])
    ours, ref = ours_cls(params, **config), ref_cls(clone_params(params), **config)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["state", "param_groups"]
    skipping = ours_cls(params, skip_nonfinite=True, **config)
    saved = skipping.state_dict()
    assert list(saved) == ["state", "param_groups", "skipped_steps"]
    # A dict that torch's checks refuse changes nothing, the count included.
    saved["skipped_steps"] = torch.tensor(5)
    saved["param_groups"][0]["params"] = saved["param_groups"][0]["params"] * 2
    with pytest.raises(ValueError, match="doesn't match the size"):
        skipping.load_state_dict(saved)
    assert int(skipping.skipped_steps) == 0


def test_skipped_steps_survive_a_checkpoint(device, tmp_path):
    """skipped_steps is in the state_dict, through torch.save, and the dict still loads into torch."""
    params = make_params(device, torch.float32, ["non_aligned", "bias"])
    opt = Adam(params, skip_nonfinite=True)
    for poison in (True, False, True):
        grads = [torch.randn_like(p) for p in params]
        if poison:
            grads[1][0] = math.nan
        set_grads(params, grads)
        opt.step()
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    saved = torch.load(path, weights_only=True)
    assert saved["skipped_steps"].item() == 2
    restored = Adam(params, skip_nonfinite=True)
    restored.load_state_dict(saved)
    assert restored.skipped_steps.item() == 2
    assert restored.skipped_steps.device.type == device
    assert restored.state[params[0]]["step"].item() == 1
    plain = torch.optim.Adam(params)
    plain.load_state_dict(saved)  # torch ignores the extra key
    assert plain.state[params[0]]["exp_avg"].equal(opt.state[params[0]]["exp_avg"])


def _ratio(after: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    return (after.double() - before.double()).norm() / before.double().norm()


@pytest.mark.parametrize("master", [False, True], ids=["stochastic_rounding", "master_weights"])
def test_update_ratios_of_16_bit_params(master, device):
    """bfloat16 with stochastic rounding: the ratio of the update as stored, rounding
    included (not of its round-to-nearest); with master weights: the float32 master's."""
    torch.manual_seed(3)
    # Sizes past a SIMD vector and with a tail, so both loops of the kernel count.
    params = [torch.nn.Parameter(torch.randn(n, device=device, dtype=torch.bfloat16)) for n in (1000, 37)]
    opt = Adam(params, lr=1e-3, stochastic_rounding=not master, master_weights=master)
    opt.track_update_ratios()
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        tracked = [opt.state[p]["master_param"] if master and opt.state[p] else p for p in params]
        before = [t.detach().clone() for t in tracked]
        opt.step()
        after = [opt.state[p]["master_param"] if master else p for p in params]
        ratios = opt.update_ratios()
        for p, a, b in zip(params, after, before):
            if master and b.dtype != torch.float32:  # the first step creates the master from p
                continue
            torch.testing.assert_close(ratios[p], _ratio(a.detach(), b), rtol=1e-4, atol=0)


def test_update_ratios_of_a_skipped_step_are_zero(device):
    p = torch.nn.Parameter(torch.randn(100, device=device))
    opt = Adam([p], lr=0.1, skip_nonfinite=True)
    opt.track_update_ratios()
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.update_ratios()[p] > 0
    p.grad[0] = float("inf")
    opt.step()
    assert opt.update_ratios()[p].item() == 0.0
