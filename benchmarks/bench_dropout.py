"""Benchmark fastopt dropout against torch's CPU/CUDA dropout paths.

Usage: python benchmarks/bench_dropout.py [--quick] [--device cpu|cuda] [--out DIR]

Cases (p = 0.5, one flat tensor): forward, and forward + backward. Contenders
run on identical inputs, interleaved round-robin with the in-place triad of
benchmarks/common.py and a copy into a preallocated tensor (the read-x,
write-y floor of forward). Also reported: the bytes per element that autograd
keeps for backward, seen through torch.autograd.graph.saved_tensors_hooks.
Bytes moved are minimal: forward reads x and writes y; backward reads dy and
writes dx (fastopt regenerates the mask; torch also reads its saved mask,
which is not counted).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

import fastopt
import fastopt.nn.functional as FF
from common import Triad, environment, format_table, gb_per_s, measure_bandwidth, run_interleaved, write_json

P = 0.5
TRIAD = "triad (reference)"
COPY = "copy y.copy_(x) (reference)"
FASTOPT = "fastopt dropout"
FASTOPT_INPLACE = "fastopt dropout (inplace)"
TORCH = "torch F.dropout"
NATIVE = "torch.native_dropout"

Dropout = Callable[[torch.Tensor], torch.Tensor]

# Forward functions of each contender that has autograd.
DROPOUTS: dict[str, Dropout] = {
    FASTOPT: lambda x: FF.dropout(x, P),
    TORCH: lambda x: torch.nn.functional.dropout(x, P),
    NATIVE: lambda x: torch.native_dropout(x, P, True)[0],
}


def saved_bytes_per_element(fn: Dropout, x: torch.Tensor) -> float:
    """Bytes autograd saves for backward per element of x, x itself excluded."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values()) / x.numel()


def forward_contenders(x: torch.Tensor, scratch: torch.Tensor) -> dict[str, Callable[[], object]]:
    fns: dict[str, Callable[[], object]] = {name: (lambda f=f: f(x)) for name, f in DROPOUTS.items()}
    # In place on a scratch copy: a value-preserving scale would be better, but
    # repeated dropout only zeroes more elements, which costs the same.
    fns[FASTOPT_INPLACE] = lambda: FF.dropout(scratch, P, inplace=True)
    fns[COPY] = lambda: scratch.copy_(x)
    return fns


def backward_contenders(x: torch.Tensor, grad: torch.Tensor) -> dict[str, Callable[[], object]]:
    leaf = x.detach().requires_grad_()

    def step(f: Dropout) -> Callable[[], object]:
        def run() -> None:
            leaf.grad = None
            f(leaf).backward(grad)

        return run

    return {name: step(f) for name, f in DROPOUTS.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    default_device = "cuda" if torch.cuda.is_available() and fastopt.build_info()["cuda"] else "cpu"
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    parser.add_argument("--numel", type=int, default=None, help="elements (default 16M on CPU, 256M on CUDA)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    numel = args.numel or (16 if device.type == "cpu" else 256) * 2**20
    # torch's CPU dropout takes ~0.25 s per 16M-element call, so few repetitions.
    reps, warmup = (3, 1) if args.quick else (9, 2)

    env = environment(device)
    triad = Triad(device)
    bandwidth = measure_bandwidth(triad, device, reps)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(numel, generator=gen, device=device)
    grad = torch.randn(numel, generator=gen, device=device)
    scratch = x.clone()
    elem = x.element_size()
    print(f"device: {device.type} ({env.get('gpu_name', env['cpu_model'])}), threads: {env['threads']}")
    print(f"torch {env['torch_version']}, fastopt build_info: {fastopt.build_info()}")
    print(
        f"bandwidth: triad {bandwidth.triad_gbps:.1f} GB/s, copy {bandwidth.copy_gbps:.1f} GB/s; "
        f"{numel:,} float32 elements, p={P}"
    )

    records = []
    cases = {
        "forward": (forward_contenders(x, scratch), 2 * numel * elem),
        "forward+backward": (backward_contenders(x, grad), 4 * numel * elem),
    }
    rows = []
    for case, (fns, nbytes) in cases.items():
        stats = run_interleaved({**fns, TRIAD: triad}, device, reps, warmup)
        triad_gbps = gb_per_s(triad.nbytes, stats[TRIAD].median)
        torch_ms = stats[TORCH].median
        for name, s in stats.items():
            moved = triad.nbytes if name == TRIAD else nbytes
            gbps = gb_per_s(moved, s.median)
            rec = {
                "case": case,
                "contender": name,
                "numel": numel,
                "bytes": moved,
                "median_ms": s.median,
                "p20_ms": s.p20,
                "p80_ms": s.p80,
                "samples_ms": s.samples,
                "gbps": gbps,
                "fraction_of_triad": gbps / triad_gbps,
                "speedup_vs_torch_dropout": None if name in (TRIAD, COPY) else torch_ms / s.median,
            }
            records.append(rec)
            speedup = rec["speedup_vs_torch_dropout"]
            rows.append(
                [case, name, f"{s.median:.2f}", f"{s.p20:.2f}-{s.p80:.2f}", f"{gbps:.1f}",
                 f"{100 * gbps / triad_gbps:.0f}%", "" if speedup is None else f"{speedup:.1f}x"]
            )  # fmt: skip
    print()
    print(format_table(["case", "contender", "median ms", "p20-p80", "GB/s", "% of triad", "vs torch F.dropout"], rows))

    memory = {name: saved_bytes_per_element(f, x.detach().requires_grad_()) for name, f in DROPOUTS.items()}
    print()
    print(format_table(["contender", "bytes saved for backward per element"], [[k, f"{v:g}"] for k, v in memory.items()]))

    payload = {
        "benchmark": "dropout",
        "environment": env,
        "fastopt_build_info": fastopt.build_info(),
        "bandwidth": bandwidth,
        "settings": {"quick": args.quick, "reps": reps, "warmup": warmup, "p": P, "dtype": "float32"},
        "results": records,
        "saved_bytes_per_element": memory,
    }
    print(f"\nwrote {write_json(args.out, 'dropout', device, payload)}")


if __name__ == "__main__":
    main()
