"""One benchmark run: bandwidth once, then every case of the chosen suites.

The result is a JSON-ready payload (see report.SCHEMA and
benchmarks/README.md for its fields).
"""

from __future__ import annotations

import dataclasses
import gc
import time
import traceback
from typing import Any, Sequence

import torch

from .harness import CacheScrubber, Stats, Triad, environment, load_average, gb_per_s, measure_bandwidth, run_interleaved
from .report import SCHEMA, Progress
from .suite import FASTOPT, REFERENCE, TORCH, Case, Context, Suite
from .suites import REGISTRY, load

TRIAD = "triad (reference)"
# Smoke runs prove the plumbing on tiny inputs; 1M floats keeps them fast.
SMOKE_BANDWIDTH_NUMEL = 2**20


def _contender_record(role: str, s: Stats, nbytes: int, triad_gbps: float, best_torch_ms: float | None) -> dict[str, Any]:
    gbps = gb_per_s(nbytes, s.median)
    compared = role not in (REFERENCE,) and best_torch_ms is not None
    return {
        "role": role,
        "median_ms": s.median,
        "p20_ms": s.p20,
        "p80_ms": s.p80,
        "samples_ms": s.samples,
        "nbytes": nbytes,
        "gbps": gbps,
        "fraction_of_triad": gbps / triad_gbps,
        "speedup_vs_best_torch": best_torch_ms / s.median if compared else None,
    }


def case_record(suite: Suite, case: Case, stats: dict[str, Stats], triad: Triad, reps: int, warmup: int) -> dict[str, Any]:
    """Everything measured for ``case``: each contender, the triad, and the summary row."""
    triad_gbps = gb_per_s(triad.nbytes, stats[TRIAD].median)
    torch_paths = [p for p in case.torch_paths if p in stats]
    best_torch = min(torch_paths, key=lambda p: stats[p].median) if torch_paths else None
    best_ms = stats[best_torch].median if best_torch else None
    contenders = {
        name: _contender_record(case.roles[name], s, case.nbytes_of.get(name, case.nbytes), triad_gbps, best_ms)
        for name, s in stats.items()
        if name != TRIAD
    }
    contenders[TRIAD] = _contender_record(REFERENCE, stats[TRIAD], triad.nbytes, triad_gbps, None)
    ours = contenders[case.fastopt]
    return {
        "suite": suite.name,
        "case": case.name,
        "params": case.params,
        "nbytes": case.nbytes,
        "reps": reps,
        "warmup": warmup,
        "contenders": contenders,
        "summary": {
            "fastopt": case.fastopt,
            "fastopt_ms": ours["median_ms"],
            "best_torch": best_torch,
            "best_torch_ms": best_ms,
            "best_torch_gbps": contenders[best_torch]["gbps"] if best_torch else None,
            "speedup": ours["speedup_vs_best_torch"],
            "gbps": ours["gbps"],
            "triad_gbps": triad_gbps,
            "fraction_of_triad": ours["fraction_of_triad"],
        },
    }


def _free(device: torch.device) -> None:
    """Drop a finished case's tensors before the next case allocates its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(ctx: Context, suite_names: Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure the bandwidth, then time every case of ``suite_names`` (all registered by default).

    A case that raises (for example a kernel family without CUDA kernels yet)
    is recorded with its error and the run goes on: a report with a gap beats
    no report.
    """
    started = time.monotonic()
    env = environment(ctx.device)  # taken first: its date and load average are the run's start
    names = list(suite_names or REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; registered: {list(REGISTRY)}")
    suites = [load(n) for n in names]
    plan = [(suite, case, *suite.reps.pick(ctx)) for suite in suites for case in suite.cases(ctx)]

    bandwidth_reps = 3 if ctx.smoke else (7 if ctx.quick else 20)
    total = bandwidth_reps + 2 + sum(reps + warmup for _, _, reps, warmup in plan)
    bar = Progress(total, enabled=progress)
    bar.set_label("bandwidth (triad, copy)")
    triad = Triad(ctx.device, SMOKE_BANDWIDTH_NUMEL) if ctx.smoke else Triad(ctx.device)
    bandwidth = measure_bandwidth(triad, ctx.device, bandwidth_reps)
    bar.advance(bandwidth_reps + 2)
    scrub = CacheScrubber(ctx.device)

    records: list[dict[str, Any]] = []
    for suite, case, reps, warmup in plan:
        bar.set_label(f"{suite.name}: {case.name}")
        case_started = time.monotonic()
        try:
            contenders = case.setup()
            setup_s = time.monotonic() - case_started
            contenders[TRIAD] = triad
            stats = run_interleaved(contenders, ctx.device, reps, warmup, on_round=bar.advance, before_each=scrub)
            records.append(case_record(suite, case, stats, triad, reps, warmup))
            # Where a run's minutes go: input setup versus timed rounds.
            records[-1]["setup_s"] = setup_s
            records[-1]["elapsed_s"] = time.monotonic() - case_started
        except Exception as exc:  # noqa: BLE001 -- recorded in the report, see the docstring
            records.append({"suite": suite.name, "case": case.name, "params": case.params,
                            "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})  # fmt: skip
            bar.done = min(bar.total, bar.done + reps + warmup)  # count the rounds it would have taken
        contenders = {}  # drop this case's inputs (a failed one's too) before the next case allocates
        _free(ctx.device)

    notes: dict[str, dict[str, object]] = {}
    for suite in suites:
        if suite.notes is not None:
            try:
                notes[suite.name] = suite.notes(ctx)
            except Exception as exc:  # noqa: BLE001 -- same policy as cases
                notes[suite.name] = {"error": f"{type(exc).__name__}: {exc}"}
    bar.close()
    return {
        "schema": SCHEMA,
        "environment": env,
        "loadavg_1min_end": load_average(),
        "settings": {"quick": ctx.quick, "smoke": ctx.smoke, "peers": ctx.peers, "suites": names,
                     "bandwidth_reps": bandwidth_reps,
                     "bytes": "minimal traffic: each input read once, each output written once",
                     "roles": {"fastopt": FASTOPT, "torch": TORCH, "other": ["peer", "extra", "reference", "invalid"]}},
        "bandwidth": dataclasses.asdict(bandwidth),
        "suites": {s.name: s.title for s in suites},
        "cases": records,
        "notes": notes,
        "elapsed_s": time.monotonic() - started,
    }  # fmt: skip
