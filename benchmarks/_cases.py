"""pytest-benchmark glue: the cases of fastopt.bench's suites as pytest parameters.

The pytest-benchmark files reuse the suites' own case definitions (inputs,
contenders, byte counts), so `make bench` and `pytest benchmarks/` time the
same work; these files only pick representative cases of each family.
"""

from __future__ import annotations

import os

import pytest
import torch

from fastopt.bench.suite import REFERENCE, Case, Context
from fastopt.bench.suites import load


def context() -> Context:
    """CPU unless FASTOPT_BENCH_DEVICE=cuda (pytest-benchmark times with host clocks; see below)."""
    return Context(device=torch.device(os.environ.get("FASTOPT_BENCH_DEVICE", "cpu")))


def params(suite_name: str, case_names: list[str]) -> list:
    """pytest.param(case, contender) for every timed contender of the named cases.

    Reference contenders (copies) are left out: they measure the machine, not
    a commit.
    """
    suite = load(suite_name)
    by_name = {c.name: c for c in suite.cases(context())}
    missing = [n for n in case_names if n not in by_name]
    if missing:
        raise KeyError(f"{suite_name} has no case(s) {missing}; it has {sorted(by_name)}")
    return [
        pytest.param(by_name[name], contender, id=f"{name} | {contender}")
        for name in case_names
        for contender, role in by_name[name].roles.items()
        if role != REFERENCE
    ]


def run(benchmark, case: Case, contender: str, rounds: int = 15) -> None:
    """Time one contender of ``case``; cases share a group, so contenders sit side by side.

    Rounds are fixed (pedantic mode) rather than calibrated, so two commits
    are compared on the same number of samples. On CUDA the call is followed
    by a synchronize, since pytest-benchmark's clock is the host's.
    """
    fn = case.setup()[contender]
    if context().device.type == "cuda":
        inner = fn

        def fn() -> None:
            inner()
            torch.cuda.synchronize()

    benchmark.group = case.name
    benchmark.extra_info.update({"bytes_per_call": case.nbytes, "role": case.roles[contender], **case.params})
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=2, iterations=1)
