"""Per-call host overhead of fastopt's modules against torch's, on inputs too small to cost anything else.

    python benchmarks/host_overhead.py [--device cpu|cuda] [--threads N] [--calls N]

On a tiny input the time of a module's forward, or forward + backward, is
what the framework spends around the kernels: Python, dispatch, autograd
bookkeeping, allocations and (on CUDA) launches. On a GPU that cost is paid
by every layer of a model on top of its kernels, which for a ResNet-sized
activation take only tens of microseconds, so it decides much of how fast
the normalization layers look there. Prints medians in microseconds,
fastopt's and torch's timed alternately in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import fastopt.nn

Factory = Callable[[], torch.nn.Module]

LAYERS: dict[str, tuple[Factory, Factory, tuple[int, ...]]] = {
    "BatchNorm2d(8)": (lambda: fastopt.nn.BatchNorm2d(8), lambda: torch.nn.BatchNorm2d(8), (2, 8, 4, 4)),
    "GroupNorm(4, 8)": (lambda: fastopt.nn.GroupNorm(4, 8), lambda: torch.nn.GroupNorm(4, 8), (2, 8, 4, 4)),
    "LayerNorm(8)": (lambda: fastopt.nn.LayerNorm(8), lambda: torch.nn.LayerNorm(8), (16, 8)),
    "Dropout(0.1)": (lambda: fastopt.nn.Dropout(0.1), lambda: torch.nn.Dropout(0.1), (16, 8)),
}


def median_us(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in microseconds, after a warm-up; synchronised on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(calls // 10):
        fn()
    samples = []
    for _ in range(calls):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--calls", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{device}, {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}; median us per call")
    print("| layer | mode | fastopt fwd | torch fwd | fastopt fwd+bwd | torch fwd+bwd |")
    print("|---|---|---|---|---|---|")
    for name, (ours_factory, torch_factory, shape) in LAYERS.items():
        x = torch.randn(shape, device=device, requires_grad=True)
        dy = torch.randn(shape, device=device)
        modules = [ours_factory().to(device), torch_factory().to(device)]
        for training in (True, False):
            row = []
            for m in modules:
                m.train(training)
            # In one run: each module's forward, then each module's forward + backward.
            for step in ("fwd", "fwd+bwd"):
                for m in modules:
                    if step == "fwd":
                        row.append(median_us(lambda m=m: m(x), args.calls, device))
                    else:
                        row.append(median_us(lambda m=m: m(x).backward(dy), args.calls, device))
            mode = "train" if training else "eval"
            print(f"| {name} | {mode} | " + " | ".join(f"{t:.1f}" for t in row) + " |")


if __name__ == "__main__":
    main()
