"""BatchNorm2d training forward+backward and evaluation forward: fastopt against torch.

Each case times the module on identical inputs, fastopt and torch interleaved
with an in-place triad (see common.py). Minimal traffic, each tensor counted
once: training forward+backward reads x and writes y, then reads x and dy and
writes dx (5 tensors of x's size; the statistics pass re-reads x, which is not
counted); evaluation reads x and writes y (2 tensors). The [C] parameters and
statistics are negligible.

    python benchmarks/bench_batchnorm.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

import fastopt
from common import Triad, environment, format_table, gb_per_s, measure_bandwidth, run_interleaved, write_json

TRIAD = "triad (reference)"
# Tensors of x's size moved per call, by mode.
TENSORS_MOVED = {"train fwd+bwd": 5, "eval fwd": 2}


def _train_step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    x = x.clone().requires_grad_()
    module.train()

    def step() -> None:
        x.grad = None
        module(x).backward(dy)

    return step


def _eval_step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    module.eval()

    def step() -> None:
        with torch.no_grad():
            module(x)

    return step


def cases(device: torch.device):
    """(name, mode, fastopt module, torch module, input) for each benchmarked case."""
    for shape in [(32, 64, 56, 56), (64, 256, 14, 14)]:
        for layout, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
            x = torch.randn(shape, device=device).to(memory_format=fmt)
            for mode in TENSORS_MOVED:
                yield f"BatchNorm2d {shape} {layout}", mode, fastopt.nn.BatchNorm2d(shape[1]), torch.nn.BatchNorm2d(shape[1]), x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    reps, warmup = (7, 2) if args.quick else (30, 3)

    triad = Triad(device)
    bandwidth = measure_bandwidth(triad, device, reps)
    rows, records = [], []
    for name, mode, ours, ref, x in cases(device):
        ours, ref = ours.to(device), ref.to(device)
        dy = torch.randn_like(x)
        make = _train_step if mode == "train fwd+bwd" else _eval_step
        contenders = {"fastopt": make(ours, x, dy), "torch": make(ref, x, dy), TRIAD: triad}
        stats = run_interleaved(contenders, device, reps, warmup)
        triad_gbps = gb_per_s(triad.nbytes, stats[TRIAD].median)
        nbytes = TENSORS_MOVED[mode] * x.numel() * x.element_size()
        for who in ("fastopt", "torch"):
            s = stats[who]
            gbps = gb_per_s(nbytes, s.median)
            speedup = stats["torch"].median / s.median
            rows.append([name, mode, who, f"{s.median:.2f}", f"{gbps:.1f}", f"{100 * gbps / triad_gbps:.0f}%", f"{speedup:.2f}x"])
            records.append(dict(case=name, mode=mode, contender=who, stats=s, nbytes=nbytes, gbps=gbps,
                                triad_gbps=triad_gbps, fraction_of_triad=gbps / triad_gbps, vs_torch=speedup))
    print(f"triad bandwidth {bandwidth.triad_gbps:.1f} GB/s, {args.threads} threads, float32")
    print(format_table(["case", "mode", "contender", "median ms", "GB/s", "% of triad", "vs torch"], rows))
    payload = {"benchmark": "batchnorm", "environment": environment(device), "fastopt_build_info": fastopt.build_info(),
               "bandwidth": bandwidth, "settings": {"threads": args.threads, "reps": reps, "warmup": warmup,
               "bytes": {mode: f"{n} * numel * element size" for mode, n in TENSORS_MOVED.items()}},
               "results": records}
    print(f"wrote {write_json(args.out, 'batchnorm', device, payload)}")


if __name__ == "__main__":
    main()
