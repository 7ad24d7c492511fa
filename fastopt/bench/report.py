"""Presenting a run: the summary table, the JSON file, the PNG chart, a progress bar.

Everything here reads the run's payload (the dict that becomes the JSON), so
the README generator and the CI check see exactly what a person sees.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

from .harness import hardware_name

SCHEMA = "fastopt-bench/1"

Payload = Mapping[str, Any]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded to equal width."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _peer_names(payload: Payload) -> list[str]:
    names: list[str] = []
    for case in payload["cases"]:
        for name, c in case.get("contenders", {}).items():
            if c["role"] == "peer" and name not in names:
                names.append(name)
    return names


def summary_table(payload: Payload) -> str:
    """One row per case: fastopt against the fastest torch path, and the bandwidth figures.

    GB/s and % of triad are fastopt's; the triad is the one timed in the
    case's own round-robin, whose GB/s has a column too (it drifts with the
    machine's load between cases). Peers, when any ran, get a column each.
    """
    peers = _peer_names(payload)
    headers = ["suite", "case", "fastopt ms", "best torch ms", "best torch path", "speed-up", "GB/s", "% of triad",
               "triad GB/s"]  # fmt: skip
    headers += [f"{p} ms" for p in peers]
    rows = []
    for case in payload["cases"]:
        if "error" in case:
            rows.append([case["suite"], case["case"], "error: " + case["error"][:60], *[""] * (len(headers) - 3)])
            continue
        s = case["summary"]
        row = [
            case["suite"], case["case"], _ms(s["fastopt_ms"]), _ms(s["best_torch_ms"]), s["best_torch"] or "",
            f"{s['speedup']:.2f}x" if s["speedup"] else "", f"{s['gbps']:.1f}", f"{100 * s['fraction_of_triad']:.0f}%",
            f"{s['gbps'] / s['fraction_of_triad']:.1f}" if s["fraction_of_triad"] else "",
        ]  # fmt: skip
        row += [_ms(case["contenders"][p]["median_ms"]) if p in case["contenders"] else "" for p in peers]
        rows.append(row)
    return format_table(headers, rows)


def detail_table(payload: Payload) -> str:
    """Every contender of every case, with its spread."""
    headers = ["suite", "case", "contender", "role", "median ms", "p20-p80", "GB/s", "% of triad", "vs best torch"]
    rows = []
    for case in payload["cases"]:
        for name, c in case.get("contenders", {}).items():
            vs = c.get("speedup_vs_best_torch")
            rows.append([
                case["suite"], case["case"], name, c["role"], _ms(c["median_ms"]),
                f"{_ms(c['p20_ms'])}-{_ms(c['p80_ms'])}", f"{c['gbps']:.1f}",
                f"{100 * c['fraction_of_triad']:.0f}%", f"{vs:.2f}x" if vs else "",
            ])  # fmt: skip
    return format_table(headers, rows)


def _load(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"


def header_lines(payload: Payload) -> list[str]:
    """The facts printed above the table: device, versions, bandwidth references."""
    env, bw = payload["environment"], payload["bandwidth"]
    return [
        f"device: {env['device']} ({hardware_name(env)}), threads: {env['threads']}, "
        f"torch {env['torch_version']}, fastopt {env['fastopt_version']} @ {(env['git_commit'] or 'unknown')[:10]}, "
        f"1-min load average {_load(env.get('loadavg_1min'))} at start, {_load(payload.get('loadavg_1min_end'))} at end",
        f"bandwidth at start ({bw['numel'] // 2**20}M float32): triad {bw['triad_gbps']:.1f} GB/s "
        f"[{bw['triad_op']}, 3 arrays], copy {bw['copy_gbps']:.1f} GB/s [{bw['copy_op']}, 2 arrays]",
        "GB/s and % of triad are fastopt's, against the triad timed within each case (bandwidth drifts);",
        "speed-up = best torch ms / fastopt ms, the best torch path being the fastest of that case.",
    ]


def notes_lines(payload: Payload) -> list[str]:
    lines = []
    for suite, notes in payload.get("notes", {}).items():
        for key, value in notes.items():
            lines.append(f"{suite}: {key}: {value}")
    return lines


def result_stem(payload: Payload) -> str:
    """'bench-<device>-<YYYYMMDD-HHMMSS>' from the run's UTC date."""
    date = datetime.datetime.fromisoformat(payload["environment"]["date_utc"])
    return f"bench-{payload['environment']['device']}-{date.strftime('%Y%m%d-%H%M%S')}"


def write_json(payload: Payload, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result_stem(payload)}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def write_chart(payload: Payload, path: Path) -> str | None:
    """Draw achieved GB/s per case against the bandwidth lines; None, or why it was skipped.

    matplotlib is optional (the GPU machine may lack it and have no network),
    so its absence costs the chart, never the run.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    cases = [c for c in payload["cases"] if "summary" in c]
    if not cases:
        return "no case produced a result"
    labels = [f"{c['suite']}: {c['case']}" for c in cases]
    fast = [c["summary"]["gbps"] for c in cases]
    torch_best = [c["summary"]["best_torch_gbps"] or 0.0 for c in cases]
    triad = [c["contenders"]["triad (reference)"]["gbps"] for c in cases]
    bw = payload["bandwidth"]
    env = payload["environment"]

    height = 1.2 + 0.28 * len(cases)
    fig, ax = plt.subplots(figsize=(10, height))
    ys = list(range(len(cases)))
    bar = 0.38
    ax.barh([y - bar / 2 for y in ys], fast, height=bar, color="#1f77b4", label="fastopt")
    ax.barh([y + bar / 2 for y in ys], torch_best, height=bar, color="#ff7f0e", label="best torch path")
    ax.scatter(triad, ys, marker="|", s=120, color="black", zorder=3, label="triad, timed within the case")
    for i, peer in enumerate(_peer_names(payload)):
        points = [(c["contenders"][peer]["gbps"], y) for c, y in zip(cases, ys) if peer in c["contenders"]]
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker="x", s=30, zorder=3,
                   color=("#2ca02c", "#d62728", "#9467bd")[i % 3], label=peer)  # fmt: skip
    ax.axvline(bw["triad_gbps"], color="black", linestyle="--", linewidth=1,
               label=f"triad at start ({bw['triad_gbps']:.0f} GB/s)")
    ax.axvline(bw["copy_gbps"], color="gray", linestyle=":", linewidth=1,
               label=f"copy at start ({bw['copy_gbps']:.0f} GB/s)")  # fmt: skip
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("achieved GB/s (minimal bytes: each input read once, each output written once)")
    ax.set_title(
        f"fastopt vs torch on {hardware_name(env)} ({env['device']}, {env['threads']} threads), "
        f"torch {env['torch_version']}, {env['date_utc'][:10]}",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


class Progress:
    """A plain progress bar on a text stream (stderr by default).

    On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints a
    line at every tenth of the work, so logs stay short. The unit is one
    round of a case's round-robin; the estimate of the time left assumes the
    remaining rounds cost what the finished ones did on average.
    """

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True, width: int = 30) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.label = ""
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1

    def set_label(self, label: str) -> None:
        self.label = label
        self._draw(force=True)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        self._draw()

    def _line(self) -> str:
        frac = self.done / self.total
        filled = int(frac * self.width)
        elapsed = time.monotonic() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else math.nan
        eta_text = "--:--" if math.isnan(eta) else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        return (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {100 * frac:3.0f}% "
            f"{int(elapsed) // 60}:{int(elapsed) % 60:02d} elapsed, ~{eta_text} left  {self.label}"
        )

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if force or now - self._last_draw > 0.1 or self.done == self.total:
                self.stream.write("\r\033[K" + self._line()[:160])
                self.stream.flush()
                self._last_draw = now
            return
        tenth = (10 * self.done) // self.total
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
