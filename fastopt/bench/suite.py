"""The interface between the runner and a benchmark family ("suite").

A suite is one module under ``fastopt/bench/suites/`` that defines
``SUITE = Suite(...)``, plus one line in ``suites/__init__.py``'s registry.
Its ``cases(ctx)`` lists the cases; each case names its contenders only when
the runner calls ``setup()``, so listing all cases allocates nothing and a
case's inputs are freed before the next case builds its own. The runner does
everything else: the interleaved timing with the triad, GB/s, the fraction of
bandwidth, the speed-up against the best torch path, the table, the JSON, the
chart and the progress bar.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from .harness import Call, cuda_graph_replay

# Contender roles. The table compares the fastopt contender with the fastest
# torch contender; peers (other libraries) and extras (fastopt variants,
# reference copies) are timed in the same round-robin and kept in the JSON.
# A torch path that a suite found computing wrong results in the installed
# torch is INVALID: still timed and kept, never the one compared against
# (skipping work makes a kernel fast, not a fair baseline).
FASTOPT = "fastopt"
TORCH = "torch"
PEER = "peer"
EXTRA = "extra"
REFERENCE = "reference"
INVALID = "invalid"


@dataclass(frozen=True)
class Context:
    """What a suite may depend on when it lists its cases.

    ``smoke`` asks for tiny inputs (the CI check of the report: it proves the
    plumbing, never speed); ``quick`` keeps the real sizes with fewer
    repetitions; ``peers`` asks for other libraries' contenders where installed.
    """

    device: torch.device
    quick: bool = False
    smoke: bool = False
    peers: bool = False

    @property
    def batch_scale(self) -> int:
        """How many times the CPU's batch the norm suites time on CUDA: 8.

        The CPU shapes' tensors (13-26 MB) fit in an H100's 50 MB L2 cache,
        from which a backward would re-read x and into which outputs could
        still be unwritten when the timer stops, overstating GB/s up to 2x.
        Eight times the batch puts every tensor at 100-200 MB.
        """
        return 8 if self.device.type == "cuda" and not self.smoke else 1


@dataclass(frozen=True)
class Reps:
    """Timed rounds and warm-up rounds per case, for full and --quick runs.

    The defaults are sized for the 2-core dev machine: the optimizer suite's
    32 cases run up to six contenders each, and torch's for-loop paths take
    a few hundred ms a step there. Measured there while other builds ran: a
    full run took 8.7 min at load 2-3 and 18.7 min at load 6-8, and
    --quick took 145 s with 5+1 rounds at load 3, and 47 s with 4+1 at load 1.
    """

    full: tuple[int, int] = (30, 3)
    quick: tuple[int, int] = (4, 1)

    def pick(self, ctx: Context) -> tuple[int, int]:
        if ctx.smoke:
            return (3, 1)
        return self.quick if ctx.quick else self.full


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration: the same work done by several contenders.

    ``setup()`` builds the inputs and returns one zero-argument callable per
    contender, each doing the case's work once on its own copy of identical
    inputs. ``roles`` maps each contender name to FASTOPT (exactly one),
    TORCH, PEER, EXTRA, REFERENCE or INVALID. ``nbytes`` is the minimal traffic of one
    call (each input read once, each output written once); ``nbytes_of``
    overrides it for contenders that do different work (a reference copy).
    ``params`` are facts recorded in the JSON (dtype, shapes, hyperparameters).
    """

    name: str
    nbytes: int
    setup: Callable[[], dict[str, Call]]
    roles: dict[str, str]
    params: dict[str, object] = field(default_factory=dict)
    nbytes_of: dict[str, int] = field(default_factory=dict)

    @property
    def fastopt(self) -> str:
        return next(n for n, r in self.roles.items() if r == FASTOPT)

    @property
    def torch_paths(self) -> list[str]:
        return [n for n, r in self.roles.items() if r == TORCH]


@dataclass(frozen=True)
class Suite:
    """A family of cases; see the module docstring.

    ``notes(ctx)``, when given, returns facts that are not timings (for
    example the bytes autograd saves per element); they go into the JSON and
    are printed under the table.
    """

    name: str
    title: str
    cases: Callable[[Context], list[Case]]
    reps: Reps = Reps()
    notes: Callable[[Context], dict[str, object]] | None = None


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")


GRAPH_SUFFIX = " [CUDA graph]"


def graph_replayed(case: Case) -> Case:
    """``case`` with its fastopt and torch contenders captured into CUDA graphs and timed as replays.

    The plain case times a call as a user's eager loop runs it, host cost
    included; this one times the device's share alone (see
    :func:`~fastopt.bench.harness.cuda_graph_replay`), which is what a
    bandwidth fraction should be taken of, and what a model under CUDA graphs
    (``torch.compile(mode="reduce-overhead")``, or captured by hand) gets.
    Extras, references and invalid paths are left out: each kept contender holds a graph
    and its memory pool. A contender that cannot be captured fails the case,
    which the report records as an error row.
    """
    roles = {name: role for name, role in case.roles.items() if role in (FASTOPT, TORCH)}

    def setup() -> dict[str, Call]:
        calls = case.setup()
        return {name: cuda_graph_replay(calls[name]) for name in roles}

    return dataclasses.replace(
        case, name=case.name + GRAPH_SUFFIX, setup=setup, roles=roles,
        params={**case.params, "timing": "CUDA graph replay"},
        nbytes_of={n: b for n, b in case.nbytes_of.items() if n in roles},
    )  # fmt: skip


def with_graph_replays(cases: list[Case], ctx: Context) -> list[Case]:
    """``cases``, followed on CUDA by their CUDA-graph versions (:func:`graph_replayed`).

    Not in smoke runs, which check the report's plumbing on the CPU path's
    terms; and not on the CPU, which has no graphs and no launch cost.
    """
    if ctx.device.type != "cuda" or ctx.smoke:
        return cases
    return cases + [graph_replayed(case) for case in cases]
