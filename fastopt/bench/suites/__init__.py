"""The registry of benchmark suites: name -> module defining ``SUITE``.

Adding a family is one module in this folder plus one line here (see
benchmarks/README.md, "Adding a suite"). Modules are imported only when their
suite runs, so one that cannot import on a machine fails alone.
"""

from __future__ import annotations

import importlib

from ..suite import Suite

# In run order; the order also sets the rows of the table and the chart.
REGISTRY: dict[str, str] = {
    "optim": "fastopt.bench.suites.optim",
    "many_groups": "fastopt.bench.suites.many_groups",
    "ema": "fastopt.bench.suites.ema",
    "batchnorm": "fastopt.bench.suites.batchnorm",
    "norm": "fastopt.bench.suites.norm",
    "dropout": "fastopt.bench.suites.dropout",
}


def load(name: str) -> Suite:
    """The ``SUITE`` object of the registered suite ``name``."""
    suite = importlib.import_module(REGISTRY[name]).SUITE
    if suite.name != name:
        raise RuntimeError(f"suite module {REGISTRY[name]} defines SUITE named {suite.name!r}, registered as {name!r}")
    return suite
