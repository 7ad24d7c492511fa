"""Optimizer steps: fastopt against torch's for-loop, foreach and fused paths.

All contenders of a case step identical copies of the same parameters and
fixed gradients. Minimal traffic per parameter is (reads + writes) x element
size: Adam/AdamW without amsgrad read param, grad, exp_avg, exp_avg_sq and
write param, exp_avg, exp_avg_sq (28 B per float32 parameter). With --peers,
DeepSpeed's CPU Adam joins the Adam and AdamW cases when it imports.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

import fastopt.optim

from ..harness import Call
from ..suite import EXTRA, FASTOPT, INVALID, PEER, TORCH, Case, Context, Suite, dtype_name

Shape = tuple[int, ...]
OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

FUSED = "torch fused"
FOREACH = "torch foreach"
FOR_LOOP = "torch for-loop"
WITH_RATIOS = "fastopt + update ratios"
DEEPSPEED = "DeepSpeed CPUAdam"

# torch.optim.Adam/AdamW with foreach=None and fused=None call
# _default_to_fused_or_foreach(params, differentiable, use_fused=False): fused
# is never chosen, and foreach only when every param lives on a device with
# foreach kernels (cuda, xpu, ...; cpu is not one). So the default path is the
# for-loop on CPU and foreach on CUDA.
TORCH_DEFAULT = {"cpu": FOR_LOOP, "cuda": FOREACH}

DTYPES = (torch.float32, torch.bfloat16)

# ResNet-50's stem width is 64; 40 keeps every channel count a multiple of 8
# and brings the total from 25.6M down to about 10M parameters.
RESNET_BASE_WIDTH = 40


@dataclass(frozen=True, eq=False)  # hashed by identity: a spec keys torch_path_fault's cache
class OptimSpec:
    """One benchmarked optimizer configuration.

    ``reads``/``writes`` count the per-parameter tensors the update must read
    and write (param, grad and state); scalar step counters are negligible.
    ``torch_paths`` lists the torch implementations that exist for it, and
    ``fused_devices`` the device types torch's fused path runs on.
    """

    name: str
    torch_cls: type[torch.optim.Optimizer]
    fastopt_cls: type[torch.optim.Optimizer]
    reads: int
    writes: int
    kwargs: dict = field(default_factory=dict)
    torch_paths: tuple[str, ...] = (FOR_LOOP, FOREACH, FUSED)
    fused_devices: tuple[str, ...] = ("cpu", "cuda")

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.name}({args})" if args else self.name


# RMSprop reads param, grad, square_avg and writes param, square_avg (20 B);
# momentum_buffer and (centered) grad_avg each add a read and a write (+8 B).
# torch has no fused RMSprop, so only its for-loop and foreach paths run.
# SGD with momentum and Adagrad move 20 B per float32 parameter; torch has a
# fused SGD on CPU and CUDA, and a fused Adagrad on the CPU only.
RMSPROP_PATHS = (FOR_LOOP, FOREACH)
SPECS: tuple[OptimSpec, ...] = (
    OptimSpec("Adam", torch.optim.Adam, fastopt.optim.Adam, reads=4, writes=3),
    OptimSpec("AdamW", torch.optim.AdamW, fastopt.optim.AdamW, reads=4, writes=3),
    OptimSpec("RMSprop", torch.optim.RMSprop, fastopt.optim.RMSprop, reads=3, writes=2, torch_paths=RMSPROP_PATHS),
    OptimSpec("RMSprop", torch.optim.RMSprop, fastopt.optim.RMSprop, reads=4, writes=3,
              kwargs={"momentum": 0.9}, torch_paths=RMSPROP_PATHS),
    OptimSpec("RMSprop", torch.optim.RMSprop, fastopt.optim.RMSprop, reads=4, writes=3,
              kwargs={"centered": True}, torch_paths=RMSPROP_PATHS),
    OptimSpec("RMSprop", torch.optim.RMSprop, fastopt.optim.RMSprop, reads=5, writes=4,
              kwargs={"centered": True, "momentum": 0.9}, torch_paths=RMSPROP_PATHS),
    OptimSpec("SGD", torch.optim.SGD, fastopt.optim.SGD, reads=3, writes=2, kwargs={"lr": 0.01, "momentum": 0.9}),
    OptimSpec("Adagrad", torch.optim.Adagrad, fastopt.optim.Adagrad, reads=3, writes=2, fused_devices=("cpu",)),
)  # fmt: skip


def resnet50ish_shapes(base: int = RESNET_BASE_WIDTH) -> tuple[Shape, ...]:
    """Parameter shapes of a torchvision-style ResNet-50 with stem width ``base``.

    Stem conv + BN, then 3/4/6/3 bottleneck blocks (1x1, 3x3, 1x1 convs with
    4x expansion, each followed by a BN weight/bias pair; the first block of a
    stage adds a 1x1 downsample conv + BN), then the fc layer. With base=64
    this is exactly ResNet-50: 161 tensors, 25,557,032 parameters.
    """
    shapes: list[Shape] = []

    def conv_bn(out_ch: int, in_ch: int, k: int) -> None:
        shapes.extend([(out_ch, in_ch, k, k), (out_ch,), (out_ch,)])

    conv_bn(base, 3, 7)
    in_ch = base
    for stage, blocks in enumerate((3, 4, 6, 3)):
        width = base * 2**stage
        for block in range(blocks):
            conv_bn(width, in_ch, 1)
            conv_bn(width, width, 3)
            conv_bn(4 * width, width, 1)
            if block == 0:
                conv_bn(4 * width, in_ch, 1)
            in_ch = 4 * width
    shapes.extend([(1000, in_ch), (1000,)])
    return tuple(shapes)


def layouts(ctx: Context) -> dict[str, tuple[Shape, ...]]:
    """Parameter layouts: one big flat tensor and a ResNet-like list of 161.

    The flat tensor is 4x larger on CUDA so that a step lasts long enough to
    time well with events and still dwarfs the GPU's L2 cache. Smoke runs use
    tiny versions of both, keeping the many-tensor shape of the second.
    """
    if ctx.smoke:
        return {"flat64K": ((64 * 2**10,),), "resnet50ish-w2": resnet50ish_shapes(base=2)}
    flat_m = 64 if ctx.device.type == "cuda" else 16
    return {f"flat{flat_m}M": ((flat_m * 2**20,),), "resnet50ish": resnet50ish_shapes()}


@functools.lru_cache(maxsize=1)
def _master(shapes: tuple[Shape, ...], dtype: torch.dtype, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Seeded parameters and small fixed gradients, drawn once per case.

    Every contender then clones them: drawing normals costs several times a
    copy, and a case has up to six contenders. Only the newest case's
    tensors are kept.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, generator=gen, device=device, dtype=dtype) for s in shapes]
    # Small gradients keep parameters well-scaled however many steps run.
    grads = [torch.randn(s, generator=gen, device=device, dtype=dtype).mul_(1e-2) for s in shapes]
    return params, grads


def setup_params(shapes: tuple[Shape, ...], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Fresh parameters with fixed gradients: identical values, independent storage per contender."""
    params = []
    for p0, g0 in zip(*_master(shapes, dtype, device)):
        p = p0.clone().requires_grad_()
        p.grad = g0.clone()
        params.append(p)
    return params


def deepspeed_adam_factory(spec: OptimSpec) -> OptimizerFactory | None:
    """DeepSpeed's CPU Adam configured like ``spec``, or None when unavailable.

    DeepSpeedCPUAdam defaults to AdamW mode and its own weight decay of 0, so
    both are set from torch's defaults of the matching class. Its C++ op is
    compiled on first use (about a minute), which is why the probe runs it once.
    """
    if spec.name not in ("Adam", "AdamW"):
        return None
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception:  # ImportError, or a deepspeed that fails at import time
        return None
    adamw = spec.name == "AdamW"
    return functools.partial(DeepSpeedCPUAdam, lr=1e-3, weight_decay=1e-2 if adamw else 0.0, adamw_mode=adamw)


@functools.cache
def deepspeed_status() -> str:
    """'available', or why DeepSpeed's CPU Adam cannot run here (one probe per process)."""
    factory = deepspeed_adam_factory(SPECS[0])
    if factory is None:
        return "not installed (import deepspeed.ops.adam failed)"
    try:
        p = torch.zeros(8, requires_grad=True)
        p.grad = torch.ones(8)
        factory([p]).step()
    except Exception as exc:  # its JIT build can fail in many ways; report, do not crash
        return f"unusable: {type(exc).__name__}: {exc}"
    return "available"


def _with_update_ratios(spec: OptimSpec, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """fastopt with update-ratio tracking on, to show what the in-loop sums cost."""
    opt = spec.fastopt_cls(params, **spec.kwargs)
    opt.track_update_ratios()
    return opt


PATH_KWARGS = {FOR_LOOP: {"foreach": False}, FOREACH: {"foreach": True}, FUSED: {"fused": True}}

# A torch path is a baseline only if it gets the update right. Each
# (optimizer, dtype, path) is checked once per process: PROBE_STEPS steps on a
# PROBE_NUMEL-element parameter (whole SIMD blocks and a tail) against torch's
# for-loop in float64, started from the same rounded values and fed the same
# gradients. The check is for gross faults (updates skipped, state written
# with garbage), not rounding: it fails a path whose parameter change or any
# state tensor is off by more than PROBE_TOLERANCE times that tensor's
# largest magnitude. On torch 2.13 (CPU) every correct float32 and bf16 path,
# and fastopt, stays under 0.05 (bf16 AdamW's for-loop param change: 0.047).
# torch 2.13's fused CPU SGD in bf16 and fp16 is off by 100%: it skips the
# update of every whole SIMD block (pytorch/pytorch#191763, fixed after 2.13).
PROBE_NUMEL = 4099
PROBE_STEPS = 3
PROBE_TOLERANCE = 0.25


def _probe_run(make: OptimizerFactory, dtype: torch.dtype, rounded_to: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """The parameter's change and float state after the probe's steps in ``dtype``, as float64.

    The starting values and gradients are rounded to ``rounded_to`` first, so
    that the float64 reference sees exactly the values the probed run sees.
    """
    gen = torch.Generator().manual_seed(0)
    # Small params and unit grads: the change, not the rounding of the param, dominates.
    start = (torch.randn(PROBE_NUMEL, generator=gen) * 1e-2).to(rounded_to)
    grads = [torch.randn(PROBE_NUMEL, generator=gen).to(rounded_to) for _ in range(PROBE_STEPS)]
    p = start.to(device, dtype, copy=True).requires_grad_()
    opt = make([p])
    for g in grads:
        p.grad = g.to(device, dtype)
        opt.step()
    out = {"param change": p.detach().double().cpu() - start.double()}
    for key, value in opt.state[p].items():
        if torch.is_tensor(value) and value.is_floating_point() and value.numel() == PROBE_NUMEL:
            out[key] = value.double().cpu()
    return out


@functools.cache
def torch_path_fault(spec: OptimSpec, path: str, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why torch's ``path`` for ``spec`` computes wrong results in ``dtype`` (see PROBE_*), or None."""
    try:
        probed = _probe_run(functools.partial(spec.torch_cls, **spec.kwargs, **PATH_KWARGS[path]), dtype, dtype, device)
    except Exception:  # noqa: BLE001 -- a path that raises fails its case's timing, which reports it
        return None
    ref = _probe_run(functools.partial(spec.torch_cls, **spec.kwargs, foreach=False), torch.float64, dtype, device)
    for name, want in ref.items():
        got = probed.get(name)
        err = math.inf if got is None else ((got - want).abs().max() / want.abs().max()).item()
        if not err <= PROBE_TOLERANCE:  # also catches NaN
            return f"{name} off by {err:.0%} of its largest value after {PROBE_STEPS} steps, against torch's for-loop in float64"
    return None


def torch_paths(spec: OptimSpec, ctx: Context) -> list[str]:
    """The torch paths of ``spec`` that exist on ``ctx.device``."""
    return [p for p in spec.torch_paths if p != FUSED or ctx.device.type in spec.fused_devices]


def contenders(spec: OptimSpec, dtype: torch.dtype, ctx: Context) -> tuple[dict[str, OptimizerFactory], dict[str, str]]:
    """Optimizer factories per contender, all with the spec's hyperparameters, and their roles.

    A torch path that fails torch_path_fault in ``dtype`` is INVALID: timed, never the baseline.
    """
    paths = torch_paths(spec, ctx)
    factories: dict[str, OptimizerFactory] = {
        path: functools.partial(spec.torch_cls, **spec.kwargs, **PATH_KWARGS[path]) for path in paths
    }
    roles = {path: INVALID if torch_path_fault(spec, path, dtype, ctx.device) else TORCH for path in paths}
    factories["fastopt"] = functools.partial(spec.fastopt_cls, **spec.kwargs)
    roles["fastopt"] = FASTOPT
    factories[WITH_RATIOS] = functools.partial(_with_update_ratios, spec)
    roles[WITH_RATIOS] = EXTRA
    if ctx.peers and ctx.device.type == "cpu" and deepspeed_status() == "available":
        peer = deepspeed_adam_factory(spec)
        if peer is not None:
            factories[DEEPSPEED] = peer
            roles[DEEPSPEED] = PEER
    return factories, roles


def cases(ctx: Context) -> list[Case]:
    result = []
    for dtype in DTYPES:
        element_size = torch.empty((), dtype=dtype).element_size()
        for spec in SPECS:
            factories, roles = contenders(spec, dtype, ctx)
            for layout, shapes in layouts(ctx).items():

                def setup(shapes=shapes, dtype=dtype, factories=factories) -> dict[str, Call]:
                    steps = {name: make(setup_params(shapes, dtype, ctx.device)).step for name, make in factories.items()}
                    _master.cache_clear()  # the contenders hold their own copies now
                    return steps

                numel = sum(math.prod(s) for s in shapes)
                result.append(
                    Case(
                        name=f"{spec.label} {layout} {dtype_name(dtype)}",
                        nbytes=numel * (spec.reads + spec.writes) * element_size,
                        setup=setup,
                        roles=roles,
                        params={
                            "optimizer": spec.name,
                            "hyperparameters": spec.kwargs,
                            "layout": layout,
                            "tensors": len(shapes),
                            "numel": numel,
                            "dtype": dtype_name(dtype),
                            "bytes_per_param": f"({spec.reads} reads + {spec.writes} writes) x {element_size} B",
                            "torch_default_path": TORCH_DEFAULT.get(ctx.device.type, FOR_LOOP),
                        },
                    )
                )
    return result


def notes(ctx: Context) -> dict[str, object]:
    facts: dict[str, object] = {
        "torch_default_path": TORCH_DEFAULT.get(ctx.device.type, FOR_LOOP),
        "hyperparameters": "torch defaults, plus each case's hyperparameters",
    }
    faults = {
        f"{spec.label} {dtype_name(dtype)} {path}": fault
        for dtype in DTYPES
        for spec in SPECS
        for path in torch_paths(spec, ctx)
        if (fault := torch_path_fault(spec, path, dtype, ctx.device))
    }
    if faults:
        facts["torch paths left out as wrong (timed, never the baseline)"] = faults
    if ctx.peers:
        facts["deepspeed_cpu_adam"] = deepspeed_status() if ctx.device.type == "cpu" else "CPU only; not run on CUDA"
    return facts


SUITE = Suite(name="optim", title="optimizer.step()", cases=cases, notes=notes)
