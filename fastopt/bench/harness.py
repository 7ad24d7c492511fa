"""Timing machinery: interleaved repetitions, bandwidth references, run facts.

Every case follows one recipe (ARCHITECTURE.md, "Benchmarks"): time all
contenders on identical inputs, interleaved in one run together with an
in-place triad, and express each result as achieved GB/s and as a fraction of
the bandwidth that triad reached in the same round-robin.
"""

from __future__ import annotations

import datetime
import os
import random
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

# Arrays this large overflow every cache level on the machines we target
# (32 MB L3 on the dev CPU, 50 MB L2 on an H100), so the bandwidth runs
# measure DRAM/HBM rather than cache.
BANDWIDTH_NUMEL = 64 * 2**20

# The repository checkout this package lives in, when it lives in one (an
# editable install or PYTHONPATH); a wheel install has no benchmarks/ beside it.
PACKAGE_PARENT = Path(__file__).resolve().parent.parent.parent

Call = Callable[[], object]


def forward_backward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dy: torch.Tensor) -> Call:
    """A call of ``fn`` forward and backward with ``dy``, on this contender's own leaf copy of ``x``.

    Each contender gets its own leaf, so that clearing the gradient frees the
    one this contender made last round. A shared leaf charged each contender
    for freeing its predecessor's: a 64 MB torch-allocated gradient is
    unmapped page by page, which doubled fastopt's dropout time (7 ms alone,
    12 ms after a torch contender).
    """
    leaf = x.clone().requires_grad_()

    def step() -> None:
        leaf.grad = None
        fn(leaf).backward(dy)

    return step


@dataclass
class Stats:
    """Summary of one contender's samples, in milliseconds."""

    median: float
    p20: float
    p80: float
    samples: list[float]


def summarize(samples_ms: Sequence[float]) -> Stats:
    """Median and 20th/80th percentiles of ``samples_ms``."""
    if len(samples_ms) < 2:
        only = float(samples_ms[0])
        return Stats(only, only, only, [only])
    # Quintile cut points are exactly p20, p40, p60, p80.
    p20, _, _, p80 = statistics.quantiles(samples_ms, n=5, method="inclusive")
    return Stats(statistics.median(samples_ms), p20, p80, list(samples_ms))


def time_call_ms(fn: Call, device: torch.device) -> float:
    """Wall time of one ``fn()`` call in milliseconds.

    On CUDA, kernels run asynchronously, so host timers would measure the
    launch only; CUDA events bracket the work on the current stream instead.
    """
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        # Drain earlier work so it is not billed to this call.
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1e3


def cuda_graph_replay(fn: Call, warmup: int = 3) -> Call:
    """``fn`` captured once into a CUDA graph; the returned callable replays it.

    A replay is one launch, so timing it measures what the device spends on
    ``fn``'s kernels without the host's per-op cost (Python, dispatch,
    autograd, launches), which on a GPU can exceed the kernels' own time for
    ResNet-sized activations. The warm-up runs on a side stream, as torch's
    CUDA-graph documentation prescribes, so that lazily initialized state (the
    autograd engine's device threads, cuDNN plans, gradient buffers) exists
    before the capture. A forward+backward is captured whole: the backward's
    kernels run on the forward's stream.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def run_interleaved(
    contenders: Mapping[str, Call],
    device: torch.device,
    reps: int,
    warmup: int,
    on_round: Callable[[], None] | None = None,
    before_each: Call | None = None,
) -> dict[str, Stats]:
    """Time every contender ``reps`` times, round-robin, after ``warmup`` rounds.

    Each repetition runs every contender once, so slow drifts of the machine
    (frequency, other tenants) hit all contenders alike. The order within a
    repetition is shuffled (seeded, so runs are repeatable): neither the
    position in the round nor the predecessor is then systematic for any
    contender. ``before_each`` runs, untimed, before every timed call (the
    runner passes a :class:`CacheScrubber`, so that no contender inherits the
    cache its predecessor left). ``on_round`` is called after every warm-up
    and timed round (progress).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
        if on_round is not None:
            on_round()
    samples: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    for _ in range(reps):
        order.shuffle(names)
        for name in names:
            if before_each is not None:
                before_each()
            samples[name].append(time_call_ms(contenders[name], device))
        if on_round is not None:
            on_round()
    return {name: summarize(s) for name, s in samples.items()}


def gb_per_s(nbytes: int, ms: float) -> float:
    """Throughput in GB/s (10**9 bytes) for ``nbytes`` moved in ``ms``."""
    return nbytes / (ms * 1e-3) / 1e9


class Triad:
    """In-place triad ``a = a + s*b`` over float32 arrays that defeat the cache.

    It reads a and b and writes a: three arrays of traffic, and like an
    in-place optimizer step it writes back lines it has just read. torch.add
    with ``out=a`` uses all intra-op threads and was the fastest torch triad
    tried on the 2-core dev machine (on par with mul_ and addcmul_), so it
    runs at memory speed there.
    """

    op = "torch.add(a, b, alpha=s, out=a)"

    def __init__(self, device: torch.device, numel: int = BANDWIDTH_NUMEL) -> None:
        gen = torch.Generator().manual_seed(0)
        self.a = torch.rand(numel, generator=gen).to(device)
        self.b = torch.rand(numel, generator=gen).to(device)
        self.numel = numel
        self.nbytes = 3 * numel * self.a.element_size()

    def __call__(self) -> None:
        # A small alpha keeps a's growth slow: after the bandwidth copy
        # (b = a) each call scales a by 1.001, which stays finite for tens of
        # thousands of calls, more than any run makes.
        torch.add(self.a, self.b, alpha=1e-3, out=self.a)


def last_level_cache_bytes(device: torch.device) -> int | None:
    """The GPU's L2 or the CPU's largest cache in bytes, or None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        try:
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except (ValueError, IndexError):
            continue
    return max(sizes) if sizes else None


class CacheScrubber:
    """Reads a buffer of twice the last-level cache (at least 64 MiB).

    Run before each timed call, it evicts whatever the previous contender left
    in cache. Without it a case whose tensors fit in the cache (a 25 MB
    activation in a 32 MB L3) times each contender in the cache state its
    predecessor in the round left: a contender that streams its output past
    the cache leaves the input cached for the next one, one that writes
    through the cache evicts it, and the ratio measures that rather than the
    kernels. Every timed call thus starts with its tensors in memory, which is
    also what the fraction-of-bandwidth figures assume.

    It reads rather than writes: a scrub that wrote its buffer in place left
    the caches full of its own dirty lines, whose write-back the next timed
    call then paid for. Side by side in one process, BatchNorm evaluation at
    (64, 256, 14, 14) took 0.05-0.10 ms longer after a writing scrub than
    after a reading one (fastopt 0.64 against 0.54 ms, torch 0.58 against
    0.53 ms): a cost of the harness, not of either kernel.
    """

    def __init__(self, device: torch.device) -> None:
        nbytes = max(64 * 2**20, 2 * (last_level_cache_bytes(device) or 0))
        self.buffer = torch.ones(nbytes // 4, device=device)

    def __call__(self) -> None:
        self.buffer.sum()


@dataclass
class Bandwidth:
    """Memory bandwidth reference figures of one run, in GB/s."""

    triad_gbps: float
    copy_gbps: float
    numel: int
    triad_op: str
    copy_op: str


def measure_bandwidth(triad: Triad, device: torch.device, reps: int) -> Bandwidth:
    """Triad and copy bandwidth on ``triad``'s arrays, interleaved.

    The copy is ``b.copy_(a)`` between two arrays of the same device: on CUDA
    a device-to-device copy, on a CPU a memcpy. On CPUs a copy into another
    array also reads each destination line before writing it (write-allocate);
    the minimal byte count (read a, write b) does not see that read, so copy
    reports lower GB/s than the in-place triad there.
    """
    a, b = triad.a, triad.b

    def copy() -> None:
        b.copy_(a)

    stats = run_interleaved({"triad": triad, "copy": copy}, device, reps, warmup=2)
    kind = "device-to-device" if device.type == "cuda" else "host memory"
    return Bandwidth(
        triad_gbps=gb_per_s(triad.nbytes, stats["triad"].median),
        copy_gbps=gb_per_s(2 * a.numel() * a.element_size(), stats["copy"].median),
        numel=triad.numel,
        triad_op=Triad.op,
        copy_op=f"b.copy_(a) ({kind})",
    )


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo, or 'unknown'."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git_commit() -> str | None:
    """HEAD of the checkout fastopt was imported from, or None (wheel install, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PACKAGE_PARENT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def environment(device: torch.device) -> dict[str, object]:
    """Facts needed to interpret a result file later."""
    import fastopt

    info: dict[str, object] = {
        "device": device.type,
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "fastopt_version": fastopt.__version__,
        "fastopt_build_info": fastopt.build_info(),
        "git_commit": git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # Other work on the machine shifts every figure; this says how busy it was.
        "loadavg_1min": load_average(),
    }
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
    return info


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def hardware_name(env: Mapping[str, object]) -> str:
    """The GPU name on CUDA, otherwise the CPU model."""
    return str(env.get("gpu_name") or env["cpu_model"])
