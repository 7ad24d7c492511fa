"""``python -m fastopt.bench``: the benchmark report (what ``make bench`` runs).

Measures the machine's memory bandwidth, then times every kernel family
against every torch path, interleaved; prints a table and writes a JSON file
and a PNG chart (when matplotlib is installed) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import report
from .harness import PACKAGE_PARENT
from .runner import run
from .suite import Context
from .suites import REGISTRY


def default_out_dir() -> Path:
    """benchmarks/results of the checkout fastopt runs from, else of the current directory."""
    checkout = PACKAGE_PARENT / "benchmarks"
    if checkout.is_dir() and (PACKAGE_PARENT / "setup.py").exists():
        return checkout / "results"
    return Path.cwd() / "benchmarks" / "results"


def default_device() -> str:
    """CUDA when a GPU is present and fastopt was built with CUDA kernels."""
    import fastopt

    return "cuda" if torch.cuda.is_available() and fastopt.build_info()["cuda"] else "cpu"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fastopt.bench", description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer repetitions (under 2 minutes on a 2-core CPU)")
    speed.add_argument("--smoke", action="store_true", help="tiny inputs, a few rounds: checks the report, not speed")
    parser.add_argument("--suite", action="append", choices=list(REGISTRY), help="run only this suite (repeatable)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when usable, else cpu")
    parser.add_argument("--peers", action="store_true", help="also time other libraries where installed (DeepSpeed CPU Adam)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the JSON and PNG (default benchmarks/results)")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--detail", action="store_true", help="also print every contender of every case")
    args = parser.parse_args(argv)
    args.device = args.device or default_device()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = Context(device=torch.device(args.device), quick=args.quick, smoke=args.smoke, peers=args.peers)
    payload = run(ctx, args.suite, progress=not args.no_progress)

    print("\n".join(report.header_lines(payload)))
    print()
    print(report.summary_table(payload))
    if args.detail:
        print()
        print(report.detail_table(payload))
    notes = report.notes_lines(payload)
    if notes:
        print()
        print("\n".join(notes))

    out = args.out or default_out_dir()
    json_path = report.write_json(payload, out)
    print(f"\nwrote {json_path}")
    if args.no_chart:
        print("chart skipped (--no-chart)")
    else:
        png_path = json_path.with_suffix(".png")
        skipped = report.write_chart(payload, png_path)
        print(f"chart skipped: {skipped}" if skipped else f"wrote {png_path}")
    print(f"elapsed {payload['elapsed_s']:.0f} s")
    errors = [c for c in payload["cases"] if "error" in c]
    if errors:
        print(f"{len(errors)} case(s) failed; their errors are in the table and the JSON", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
