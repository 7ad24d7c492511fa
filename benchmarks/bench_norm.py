"""GroupNorm and LayerNorm forward+backward: fastopt against torch.

Each case times one forward and one backward of the module, fastopt and
torch interleaved with an in-place triad on identical inputs (see common.py).
The minimal traffic is x read and y written in the forward, and x and dy read
and dx written in the backward: 5 tensors of x's size (the [C] parameters are
negligible).

    python benchmarks/bench_norm.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

import fastopt
from common import Triad, environment, format_table, gb_per_s, measure_bandwidth, run_interleaved, write_json

TRIAD = "triad (reference)"
TENSORS_MOVED = 5


def _step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    x = x.clone().requires_grad_()

    def step() -> None:
        x.grad = None
        module(x).backward(dy)

    return step


def cases(device: torch.device):
    """(name, fastopt module, torch module, input) for each benchmarked shape."""
    for shape in [(32, 64, 56, 56), (64, 256, 14, 14)]:
        for layout, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
            x = torch.randn(shape, device=device).to(memory_format=fmt)
            yield f"GroupNorm(32) {shape} {layout}", fastopt.nn.GroupNorm(32, shape[1]), torch.nn.GroupNorm(32, shape[1]), x
    x = torch.randn(4096, 768, device=device)
    yield "LayerNorm(768) (4096, 768)", fastopt.nn.LayerNorm(768), torch.nn.LayerNorm(768), x


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
    for name, ours, ref, x in cases(device):
        ours, ref = ours.to(device), ref.to(device)
        dy = torch.randn_like(x)
        contenders = {"fastopt": _step(ours, x, dy), "torch": _step(ref, x, dy), TRIAD: triad}
        stats = run_interleaved(contenders, device, reps, warmup)
        triad_gbps = gb_per_s(triad.nbytes, stats[TRIAD].median)
        nbytes = TENSORS_MOVED * x.numel() * x.element_size()
        for who in ("fastopt", "torch"):
            s = stats[who]
            gbps = gb_per_s(nbytes, s.median)
            speedup = stats["torch"].median / s.median
            rows.append([name, who, f"{s.median:.2f}", f"{gbps:.1f}", f"{100 * gbps / triad_gbps:.0f}%", f"{speedup:.2f}x"])
            records.append(dict(case=name, contender=who, stats=s, nbytes=nbytes, gbps=gbps,
                                triad_gbps=triad_gbps, fraction_of_triad=gbps / triad_gbps, vs_torch=speedup))
    print(f"triad bandwidth {bandwidth.triad_gbps:.1f} GB/s, {args.threads} threads, float32, forward+backward")
    print(format_table(["case", "contender", "median ms", "GB/s", "% of triad", "vs torch"], rows))
    payload = {"benchmark": "norm", "environment": environment(device), "fastopt_build_info": fastopt.build_info(),
               "bandwidth": bandwidth, "settings": {"threads": args.threads, "reps": reps, "warmup": warmup,
               "bytes": f"{TENSORS_MOVED} * numel * element size"}, "results": records}
    print(f"wrote {write_json(args.out, 'norm', device, payload)}")


if __name__ == "__main__":
    main()
