"""Adam over a model whose every tensor is its own param group.

Giving each layer its own learning rate (layer-wise lr decay, per-layer
fine-tuning) turns one param group into hundreds. torch's optimizers then
run their whole per-group machinery, and for fused/foreach one kernel call,
once per group: a step is dominated by per-call overhead, not by memory
traffic. This benchmark times one ``step()`` of fastopt.optim.Adam against
torch.optim.Adam (fused, foreach and for-loop) on 400 single-tensor param
groups, interleaved in one run, with the usual figures: median time, achieved
GB/s of the minimal traffic (param, exp_avg, exp_avg_sq read and written,
grad read: 7 arrays) and its fraction of an in-place triad timed alongside.

Run: ``PYTHONPATH=. python benchmarks/bench_many_groups.py [--quick] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastopt  # noqa: E402
from common import (  # noqa: E402
    REPO_ROOT,
    Triad,
    environment,
    format_table,
    gb_per_s,
    measure_bandwidth,
    run_interleaved,
    write_json,
)

NUM_GROUPS = 400
TRIAD = "triad (reference)"

# Per layer a weight and a bias, each its own group; the sizes of a small
# MLP/transformer block stack, so that per-call overhead, the thing this
# benchmark is about, is visible next to the memory traffic.
LAYOUTS: dict[str, list[tuple[int, ...]]] = {
    # 200 layers of width 64: 0.8M elements in all, overhead-bound
    "small": [(64, 64), (64,)] * (NUM_GROUPS // 2),
    # 200 layers of width 256: 13M elements, closer to memory-bound
    "medium": [(256, 256), (256,)] * (NUM_GROUPS // 2),
}


def make_groups(shapes: list[tuple[int, ...]], device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    groups = []
    for i, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(device))
        p.grad = torch.randn(shape, generator=gen).to(device)
        # every layer its own learning rate, as in layer-wise lr decay
        groups.append({"params": [p], "lr": 1e-3 * 0.99**i})
    return groups


OptimizerFactory = Callable[[list[dict]], torch.optim.Optimizer]


class PerGroupAdam(fastopt.optim.Adam):
    """fastopt's Adam with one op call per param group, as before the
    hyperparameter table: isolates what merging the groups buys."""

    def _hparam_row(self, group: dict) -> None:
        return None


def contenders(device: torch.device) -> dict[str, OptimizerFactory]:
    out: dict[str, OptimizerFactory] = {
        "fastopt": lambda g: fastopt.optim.Adam(g, weight_decay=0.01),
        "fastopt, call per group": lambda g: PerGroupAdam(g, weight_decay=0.01),
        "torch fused": lambda g: torch.optim.Adam(g, weight_decay=0.01, fused=True),
        "torch foreach": lambda g: torch.optim.Adam(g, weight_decay=0.01, foreach=True),
        "torch for-loop": lambda g: torch.optim.Adam(g, weight_decay=0.01, foreach=False),
    }
    return out


def op_calls_per_step(opt: torch.optim.Optimizer) -> int:
    """fastopt::adam_ / aten::_fused_adam_ calls in one step, counted by the profiler."""
    names = ("fastopt::adam_", "aten::_fused_adam_")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    return sum(e.count for e in prof.key_averages() if e.key in names)


def run_layout(name: str, shapes, triad: Triad, device: torch.device, reps: int, warmup: int) -> list[dict]:
    numel = sum(torch.Size(s).numel() for s in shapes)
    nbytes = 7 * numel * 4
    steps = {}
    calls = {}
    for label, factory in contenders(device).items():
        opt = factory(make_groups(shapes, device))
        opt.step()  # creates the state outside the timing
        calls[label] = op_calls_per_step(opt)
        steps[label] = opt.step
    steps[TRIAD] = triad
    stats = run_interleaved(steps, device, reps, warmup)
    triad_gbps = gb_per_s(triad.nbytes, stats[TRIAD].median)
    records = []
    for label, s in stats.items():
        if label == TRIAD:
            continue
        records.append(
            {
                "layout": name,
                "groups": len(shapes),
                "numel": numel,
                "contender": label,
                "median_ms": s.median,
                "p20_ms": s.p20,
                "p80_ms": s.p80,
                "gbps": gb_per_s(nbytes, s.median),
                "fraction_of_triad": gb_per_s(nbytes, s.median) / triad_gbps,
                "speedup_vs_torch_fused": stats["torch fused"].median / s.median,
                "fused_op_calls_per_step": calls[label],
            }
        )
    records.append({"layout": name, "contender": TRIAD, "median_ms": stats[TRIAD].median, "gbps": triad_gbps})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS))
    # On a loaded machine, every parallel region waits for a busy core, which
    # taxes a per-group loop of calls far more than one call; --threads 1
    # shows the per-call overhead without that noise.
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reps = args.reps if args.reps is not None else (5 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)

    triad = Triad(device)
    bandwidth = measure_bandwidth(triad, device, reps=10)
    print(f"{environment(device)}\ntriad {bandwidth.triad_gbps:.1f} GB/s")
    records = []
    for name in args.layouts:
        records += run_layout(name, LAYOUTS[name], triad, device, reps, warmup)
    rows = [
        [
            r["layout"],
            r["contender"],
            f"{r['median_ms']:.3f}",
            f"{r['gbps']:.1f}",
            f"{100 * r['fraction_of_triad']:.0f}%" if "fraction_of_triad" in r else "",
            f"{r['speedup_vs_torch_fused']:.2f}x" if "speedup_vs_torch_fused" in r else "",
            str(r.get("fused_op_calls_per_step", "")),
        ]
        for r in records
    ]
    print(
        format_table(
            ["layout", "contender", "median ms", "GB/s", "% of triad", "vs torch fused", "op calls/step"],
            rows,
        )
    )
    payload = {
        "environment": environment(device),
        "bandwidth": bandwidth,
        "reps": reps,
        "quick": args.quick,
        "results": records,
    }
    print("wrote", write_json(Path(args.out), "many-groups", device, payload))


if __name__ == "__main__":
    main()
