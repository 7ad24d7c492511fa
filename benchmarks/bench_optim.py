"""Benchmark fastopt optimizers against torch's for-loop, foreach and fused paths.

Usage: python benchmarks/bench_optim.py [--quick] [--device cpu|cuda] [--out DIR]

All contenders of a case step identical copies of the same parameters and
fixed gradients, interleaved round-robin in one run. Each result is reported
as median time, p20-p80 spread, achieved GB/s under the minimal byte count
and the fraction of the bandwidth of an in-place triad that is timed in the
same round-robin.
See benchmarks/README.md for how bytes are counted.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import fastopt
import fastopt.optim
from common import (
    Bandwidth,
    Stats,
    Triad,
    environment,
    format_table,
    gb_per_s,
    measure_bandwidth,
    run_interleaved,
    write_json,
)

Shape = tuple[int, ...]
OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

FUSED = "torch fused"
FOREACH = "torch foreach"
FOR_LOOP = "torch for-loop"
TRIAD = "triad (reference)"
WITH_RATIOS = "fastopt + update ratios"

# torch.optim.Adam/AdamW with foreach=None and fused=None call
# _default_to_fused_or_foreach(params, differentiable, use_fused=False): fused
# is never chosen, and foreach only when every param lives on a device with
# foreach kernels (cuda, xpu, ...; cpu is not one). So the default path is the
# for-loop on CPU and foreach on CUDA.
TORCH_DEFAULT = {"cpu": FOR_LOOP, "cuda": FOREACH}

# ResNet-50's stem width is 64; 40 keeps every channel count a multiple of 8
# and brings the total from 25.6M down to about 10M parameters.
RESNET_BASE_WIDTH = 40


@dataclass(frozen=True)
class OptimSpec:
    """One benchmarked optimizer configuration.

    ``reads``/``writes`` count the per-parameter tensors the update must read
    and write (param, grad and state); scalar step counters are negligible.
    ``torch_paths`` lists the torch implementations that exist for it.
    """

    name: str
    torch_cls: type[torch.optim.Optimizer]
    fastopt_cls: type[torch.optim.Optimizer]
    reads: int
    writes: int
    kwargs: dict = field(default_factory=dict)
    torch_paths: tuple[str, ...] = (FOR_LOOP, FOREACH, FUSED)


# Adam without amsgrad reads param, grad, exp_avg, exp_avg_sq and writes
# param, exp_avg, exp_avg_sq: 7 tensors, 28 bytes per float32 parameter.
# RMSprop reads param, grad, square_avg and writes param, square_avg (20 B);
# momentum_buffer and (centered) grad_avg each add a read and a write (+8 B).
# torch has no fused RMSprop, so only its for-loop and foreach paths run.
RMSPROP_PATHS = (FOR_LOOP, FOREACH)
SPECS: tuple[OptimSpec, ...] = (
    OptimSpec("Adam", torch.optim.Adam, fastopt.optim.Adam, reads=4, writes=3),
    OptimSpec("AdamW", torch.optim.AdamW, fastopt.optim.AdamW, reads=4, writes=3),
    OptimSpec(
        "RMSprop", torch.optim.RMSprop, fastopt.optim.RMSprop, reads=3, writes=2,
        torch_paths=RMSPROP_PATHS,
    ),
    OptimSpec(
        "RMSprop", torch.optim.RMSprop, fastopt.optim.RMSprop, reads=4, writes=3,
        kwargs={"momentum": 0.9}, torch_paths=RMSPROP_PATHS,
    ),
    OptimSpec(
        "RMSprop", torch.optim.RMSprop, fastopt.optim.RMSprop, reads=4, writes=3,
        kwargs={"centered": True}, torch_paths=RMSPROP_PATHS,
    ),
    OptimSpec(
        "RMSprop", torch.optim.RMSprop, fastopt.optim.RMSprop, reads=5, writes=4,
        kwargs={"centered": True, "momentum": 0.9}, torch_paths=RMSPROP_PATHS,
    ),
    # SGD with momentum reads param, grad, momentum_buffer and writes param,
    # momentum_buffer: 20 bytes per float32 parameter. torch 2.13 has fused
    # SGD on CPU and CUDA.
    OptimSpec(
        "SGD", torch.optim.SGD, fastopt.optim.SGD, reads=3, writes=2, kwargs={"lr": 0.01, "momentum": 0.9}
    ),
    # Adagrad reads param, grad, sum and writes param, sum: 20 bytes per
    # float32 parameter. torch 2.13 has fused Adagrad on CPU and CUDA.
    OptimSpec("Adagrad", torch.optim.Adagrad, fastopt.optim.Adagrad, reads=3, writes=2),
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One optimizer on one parameter layout in one dtype."""

    spec: OptimSpec
    layout: str
    shapes: tuple[Shape, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def bytes_per_step(self) -> int:
        """Minimal traffic: each input read once, each output written once."""
        element_size = torch.empty((), dtype=self.dtype).element_size()
        return self.numel * (self.spec.reads + self.spec.writes) * element_size


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


def layouts(device: torch.device) -> dict[str, tuple[Shape, ...]]:
    """Parameter layouts to benchmark: one big flat tensor and a ResNet-like list.

    The flat tensor is 4x larger on CUDA so that a step lasts long enough to
    time well with events and still dwarfs the GPU's L2 cache.
    """
    flat_m = 64 if device.type == "cuda" else 16
    return {
        f"flat{flat_m}M": ((flat_m * 2**20,),),
        "resnet50ish": resnet50ish_shapes(),
    }


def setup_params(case: Case, device: torch.device) -> list[torch.Tensor]:
    """Fresh parameters with fixed random gradients for ``case``'s shapes and dtype.

    Seeded, so every contender gets an identical but independent copy.
    Gradients are small so that repeated steps keep parameters well-scaled.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in case.shapes:
        p = torch.randn(shape, generator=gen, device=device, dtype=case.dtype)
        p.grad = torch.randn(shape, generator=gen, device=device, dtype=case.dtype)
        p.grad.mul_(1e-2)
        params.append(p.requires_grad_())
    return params


def contenders(spec: OptimSpec) -> dict[str, OptimizerFactory]:
    """Optimizer factories per contender, all with the spec's hyperparameters."""
    path_kwargs = {FOR_LOOP: {"foreach": False}, FOREACH: {"foreach": True}, FUSED: {"fused": True}}
    factories: dict[str, OptimizerFactory] = {
        path: functools.partial(spec.torch_cls, **spec.kwargs, **path_kwargs[path])
        for path in spec.torch_paths
    }
    factories["fastopt"] = functools.partial(spec.fastopt_cls, **spec.kwargs)
    factories[WITH_RATIOS] = functools.partial(_with_update_ratios, spec)
    return factories


def _with_update_ratios(spec: OptimSpec, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """fastopt with update-ratio tracking on, to show what the in-loop sums cost."""
    opt = spec.fastopt_cls(params, **spec.kwargs)
    opt.track_update_ratios()
    return opt


def run_case(
    case: Case, triad: Triad, device: torch.device, reps: int, warmup: int
) -> dict[str, Stats]:
    """Time every contender's ``step()`` on its own copy of the case's inputs.

    Warm-up steps run first, so lazily created optimizer state is allocated
    before any timed step. The triad joins the round-robin as one more
    contender: on a shared machine the available bandwidth drifts by tens of
    percent within a minute, and timing the reference alongside the steps
    keeps "% of triad" a like-for-like ratio.
    """
    steps: dict[str, Callable[[], object]] = {
        name: make(setup_params(case, device)).step
        for name, make in contenders(case.spec).items()
    }
    steps[TRIAD] = triad
    stats = run_interleaved(steps, device, reps, warmup)
    # Drop this case's params and state before the next case allocates its own.
    del steps
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return stats


def result_records(
    case: Case, stats: dict[str, Stats], triad: Triad, device: torch.device
) -> list[dict]:
    """Derived figures for each contender of ``case``, then for its triad."""
    triad_stats = stats[TRIAD]
    triad_gbps = gb_per_s(triad.nbytes, triad_stats.median)
    fused_ms = stats[FUSED].median if FUSED in stats else None
    default_ms = stats[TORCH_DEFAULT[device.type]].median
    best_torch_ms = min(stats[path].median for path in case.spec.torch_paths)

    def record(name: str, s: Stats, numel: int, nbytes: int, dtype: torch.dtype) -> dict:
        # A speed-up of the triad over an optimizer step means nothing.
        is_step = name != TRIAD
        return {
            "optimizer": case.spec.name,
            "hyperparameters": case.spec.kwargs,
            "layout": case.layout,
            "dtype": str(dtype).removeprefix("torch."),
            "numel": numel,
            "bytes_per_step": nbytes,
            "contender": name,
            "median_ms": s.median,
            "p20_ms": s.p20,
            "p80_ms": s.p80,
            "samples_ms": s.samples,
            "gbps": gb_per_s(nbytes, s.median),
            "triad_gbps": triad_gbps,
            "fraction_of_triad": gb_per_s(nbytes, s.median) / triad_gbps,
            "speedup_vs_torch_fused": fused_ms / s.median if is_step and fused_ms else None,
            "speedup_vs_best_torch": best_torch_ms / s.median if is_step else None,
            "speedup_vs_torch_default": default_ms / s.median if is_step else None,
        }

    records = [
        record(name, s, case.numel, case.bytes_per_step, case.dtype)
        for name, s in stats.items()
        if name != TRIAD
    ]
    records.append(record(TRIAD, triad_stats, triad.numel, triad.nbytes, torch.float32))
    return records


def _kwargs_label(kwargs: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")" if kwargs else ""


def table_row(r: dict) -> list[str]:
    """One printed row for result record ``r``."""
    speedups = [
        "" if r[key] is None else f"{r[key]:.2f}x"
        for key in ("speedup_vs_torch_fused", "speedup_vs_best_torch", "speedup_vs_torch_default")
    ]
    return [
        f"{r['optimizer']}{_kwargs_label(r['hyperparameters'])} {r['layout']}",
        r["dtype"],
        r["contender"],
        f"{r['median_ms']:.2f}",
        f"{r['p20_ms']:.2f}-{r['p80_ms']:.2f}",
        f"{r['gbps']:.1f}",
        f"{100 * r['fraction_of_triad']:.0f}%",
        *speedups,
    ]


def print_header(
    env: dict, build_info: dict, bandwidth: Bandwidth, shapes: dict, device: torch.device
) -> None:
    """Print the run's environment, bandwidth reference and layouts."""
    hardware = env.get("gpu_name", env["cpu_model"])
    print(f"device: {device.type} ({hardware}), threads: {env['threads']}")
    print(f"torch {env['torch_version']}, fastopt build_info: {build_info}")
    print(
        f"bandwidth at start ({bandwidth.numel // 2**20}M float32): "
        f"triad {bandwidth.triad_gbps:.1f} GB/s [{bandwidth.triad_op}, 3 arrays], "
        f"copy {bandwidth.copy_gbps:.1f} GB/s [{bandwidth.copy_op}, 2 arrays]; "
        f"% of triad below is against the triad timed within each case"
    )
    for name, layout in shapes.items():
        total = sum(math.prod(s) for s in layout)
        plural = "s" if len(layout) > 1 else ""
        print(f"layout {name}: {len(layout)} tensor{plural}, {total:,} parameters")
    for spec in SPECS:
        print(
            f"{spec.name}{spec.kwargs or ''}: bytes/param = (reads {spec.reads} + writes "
            f"{spec.writes}) x element size; torch paths: {', '.join(spec.torch_paths)}"
        )
    print(f"torch default path on {device.type}: {TORCH_DEFAULT[device.type]}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    # The current device: CUDA when fastopt has CUDA kernels and a GPU is present.
    default_device = "cuda" if torch.cuda.is_available() and fastopt.build_info()["cuda"] else "cpu"
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="directory for the JSON result file",
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    reps, warmup = (7, 2) if args.quick else (40, 5)

    env = environment(device)
    build_info = fastopt.build_info()
    triad = Triad(device)
    bandwidth = measure_bandwidth(triad, device, reps)
    shapes = layouts(device)
    print_header(env, build_info, bandwidth, shapes, device)

    headers = [
        "case", "dtype", "contender", "median ms", "p20-p80", "GB/s",
        "% of triad", "vs torch fused", "vs best torch",
        f"vs torch default ({TORCH_DEFAULT[device.type]})",
    ]  # fmt: skip
    records: list[dict] = []
    for dtype in (torch.float32, torch.bfloat16):
        section: list[dict] = []
        for spec in SPECS:
            for layout, layout_shapes in shapes.items():
                case = Case(spec, layout, layout_shapes, dtype)
                stats = run_case(case, triad, device, reps, warmup)
                section += result_records(case, stats, triad, device)
        print(f"\n{str(dtype).removeprefix('torch.')} (params, grads and state)")
        print(format_table(headers, [table_row(r) for r in section]))
        records += section

    payload = {
        "benchmark": "optim",
        "environment": env,
        "fastopt_build_info": build_info,
        "bandwidth": bandwidth,
        "settings": {
            "quick": args.quick,
            "reps": reps,
            "warmup_steps": warmup,
            "hyperparameters": "torch defaults, plus each spec's kwargs (results[].hyperparameters)",
            "torch_default_path": TORCH_DEFAULT[device.type],
            "bytes_per_param": {
                spec.name + _kwargs_label(spec.kwargs): f"({spec.reads} reads + {spec.writes} writes) * element size"
                for spec in SPECS
            },
        },
        "layouts": {
            name: {"tensors": len(s), "params": sum(math.prod(x) for x in s)}
            for name, s in shapes.items()
        },
        "results": records,
    }
    path = write_json(args.out, "optim", device, payload)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
