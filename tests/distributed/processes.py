"""Two-process gloo runs for the distributed tests, with bounded waits.

A hang in a worker (a peer that died, a port taken between free_port and
init, a deadlock in torch's teardown) must fail its test, not stall CI until
its global timeout: every wait here has a deadline.
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
# Each worker trains for well under 10 s here; the rest is headroom for a
# loaded 2-core machine.
DEADLINE_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, port: int) -> None:
    """Join the group; gloo's own timeout bounds every collective."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=DEADLINE_S / 2),
    )


def run(worker: Callable[..., None], *args: Any) -> None:
    """Run worker(rank, port, *args) in WORLD_SIZE processes; raise if any
    fails or all have not finished within DEADLINE_S."""
    context = mp.start_processes(worker, args=(free_port(), *args), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + DEADLINE_S
    # join() raises ProcessRaisedException / ProcessExitedException on failure.
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"{worker.__name__} did not finish within {DEADLINE_S:.0f} s")
