"""The benchmark report (`make bench`) is produced and well-formed.

A tiny in-process run (--smoke: small inputs, a few rounds) of every
registered suite. These tests check structure and consistency only, never
speed: CI machines are shared and timing thresholds would be flaky.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

import fastopt.optim
from fastopt.bench import readme, report, runner
from fastopt.bench.__main__ import main
from fastopt.bench.suite import FASTOPT, INVALID, TORCH, Case, Context, Suite
from fastopt.bench.suites import REGISTRY, optim


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """One --smoke run of all suites: (payload, printed stdout, output folder)."""
    out = tmp_path_factory.mktemp("bench")
    captured = io.StringIO()
    import contextlib

    # One thread: the run only proves the plumbing, and on a loaded 2-core
    # machine OpenMP barriers between two threads cost more than the work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(captured):
            rc = main(["--smoke", "--device", "cpu", "--out", str(out), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    files = list(out.glob("bench-cpu-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), captured.getvalue(), files[0]


def _finite_positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_json_has_run_facts(smoke_run: tuple[dict, str, Path]) -> None:
    payload, _, _ = smoke_run
    assert payload["schema"] == report.SCHEMA
    env = payload["environment"]
    for key in ("device", "cpu_model", "torch_version", "date_utc", "threads", "fastopt_build_info", "git_commit"):
        assert key in env, key
    assert env["device"] == "cpu"
    assert env["torch_version"] == torch.__version__
    bw = payload["bandwidth"]
    assert _finite_positive(bw["triad_gbps"]) and _finite_positive(bw["copy_gbps"])
    assert payload["settings"]["smoke"] is True
    assert set(payload["suites"]) == set(REGISTRY)


def test_every_case_is_measured_and_consistent(smoke_run: tuple[dict, str, Path]) -> None:
    payload, _, _ = smoke_run
    cases = payload["cases"]
    assert {c["suite"] for c in cases} == set(REGISTRY)
    for case in cases:
        assert "error" not in case, (case["case"], case.get("error"))
        contenders = case["contenders"]
        roles = [c["role"] for c in contenders.values()]
        assert roles.count(FASTOPT) == 1 and TORCH in roles, case["case"]
        assert runner.TRIAD in contenders
        for name, c in contenders.items():
            assert len(c["samples_ms"]) == case["reps"], (case["case"], name)
            assert c["p20_ms"] <= c["median_ms"] <= c["p80_ms"], (case["case"], name)
            assert _finite_positive(c["gbps"]), (case["case"], name)
            # GB/s is the contender's byte count over its median time.
            assert c["gbps"] == pytest.approx(c["nbytes"] / (c["median_ms"] * 1e-3) / 1e9)
        s = case["summary"]
        torch_ms = {n: c["median_ms"] for n, c in contenders.items() if c["role"] == TORCH}
        assert s["best_torch"] == min(torch_ms, key=torch_ms.get)
        assert s["speedup"] == pytest.approx(s["best_torch_ms"] / s["fastopt_ms"])
        assert s["fraction_of_triad"] == pytest.approx(s["gbps"] / contenders[runner.TRIAD]["gbps"])


def test_table_is_printed(smoke_run: tuple[dict, str, Path]) -> None:
    payload, out, json_path = smoke_run
    assert "| suite" in out and "fastopt ms" in out and "best torch ms" in out and "% of triad" in out
    for case in payload["cases"]:
        assert f"| {case['case']}" in out, case["case"]
    assert f"wrote {json_path}" in out
    assert payload["notes"]["dropout"]["saved_bytes_per_element"]["fastopt"] < 1


def test_chart_is_written_or_skipped_with_a_reason(smoke_run: tuple[dict, str, Path]) -> None:
    _, out, json_path = smoke_run
    png = json_path.with_suffix(".png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "chart skipped: matplotlib is not installed" in out
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_section_is_generated(smoke_run: tuple[dict, str, Path], tmp_path: Path) -> None:
    payload, _, json_path = smoke_run
    doc = tmp_path / "README.md"
    doc.write_text(f"# title\n\nbefore\n\n{readme.BEGIN}\nstale\n{readme.END}\n\nafter\n")
    assert readme.main(["--json", str(json_path), "--readme", str(doc)]) == 0
    text = doc.read_text()
    assert "stale" not in text and text.startswith("# title\n\nbefore\n") and text.endswith("after\n")
    assert payload["environment"]["date_utc"][:10] in text
    assert payload["cases"][0]["case"] in text
    # Rewriting is idempotent: the markers survive.
    assert readme.main(["--json", str(json_path), "--readme", str(doc)]) == 0
    assert doc.read_text() == text


def test_readme_shows_the_newest_full_run_of_each_device(tmp_path: Path) -> None:
    """One section per device, CUDA first; smoke runs, runs of some suites and older runs are left out."""

    def write(name: str, device: str, date: str, smoke: bool = False, suites: list | None = None) -> Path:
        path = tmp_path / f"bench-{name}.json"
        settings = {"smoke": smoke, "suites": suites if suites is not None else list(REGISTRY)}
        path.write_text(json.dumps({"environment": {"device": device, "date_utc": date}, "settings": settings}))
        return path

    write("cpu-old", "cpu", "2026-11-01T00:00:00+00:00")
    cpu = write("cpu-new", "cpu", "2026-11-02T00:00:00+00:00")
    write("cpu-smoke", "cpu", "2026-11-03T00:00:00+00:00", smoke=True)
    write("cpu-norm-only", "cpu", "2026-11-04T00:00:00+00:00", suites=["norm"])  # a --suite run
    cuda = write("cuda", "cuda:0", "2026-10-01T00:00:00+00:00")
    assert readme.latest_results(tmp_path) == [cuda, cpu]
    with pytest.raises(FileNotFoundError):
        readme.latest_results(tmp_path / "empty")


def test_readme_without_markers_is_refused(smoke_run: tuple[dict, str, Path], tmp_path: Path) -> None:
    _, _, json_path = smoke_run
    doc = tmp_path / "README.md"
    doc.write_text("# no markers\n")
    with pytest.raises(ValueError, match="marker"):
        readme.main(["--json", str(json_path), "--readme", str(doc)])


def test_failing_case_is_reported_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite written to the documented interface; one case raises (as a family without CUDA kernels would)."""
    work = torch.ones(1024)

    def broken() -> dict:
        raise NotImplementedError("no kernel for this device")

    def fine() -> dict:
        return {"fastopt": lambda: work.mul_(1.0), "torch": lambda: work.add_(0.0)}

    roles = {"fastopt": FASTOPT, "torch": TORCH}
    suite = Suite(
        name="toy",
        title="toy",
        cases=lambda ctx: [Case("broken", 8192, broken, roles), Case("fine", 8192, fine, roles)],
    )
    monkeypatch.setitem(REGISTRY, "toy", "unused")
    monkeypatch.setattr(runner, "load", lambda name: suite)
    payload = runner.run(Context(device=torch.device("cpu"), smoke=True), ["toy"], progress=False)
    broken_case, fine_case = payload["cases"]
    assert broken_case["error"] == "NotImplementedError: no kernel for this device"
    assert fine_case["summary"]["speedup"] > 0
    assert "error: NotImplementedError" in report.summary_table(payload)


class _SkipsBlocksWhenForeach(torch.optim.SGD):
    """torch's SGD, except that its foreach path leaves the first 4096 elements of each parameter as they were."""

    def step(self, closure=None):  # type: ignore[override]
        if not self.defaults["foreach"]:
            return super().step(closure)
        params = [p for group in self.param_groups for p in group["params"]]
        kept = [p.detach()[:4096].clone() for p in params]
        super().step(closure)
        with torch.no_grad():
            for p, k in zip(params, kept):
                p[:4096] = k


def test_wrong_torch_path_is_timed_but_never_the_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimizer suite probes each torch path; one that skips updates becomes INVALID and is named in the notes."""
    spec = optim.OptimSpec("SGD", _SkipsBlocksWhenForeach, fastopt.optim.SGD, reads=3, writes=2,
                           kwargs={"lr": 0.01, "momentum": 0.9}, torch_paths=(optim.FOR_LOOP, optim.FOREACH))  # fmt: skip
    cpu = torch.device("cpu")
    assert optim.torch_path_fault(spec, optim.FOR_LOOP, torch.float32, cpu) is None
    fault = optim.torch_path_fault(spec, optim.FOREACH, torch.float32, cpu)
    assert fault is not None and fault.startswith("param change off by")
    monkeypatch.setattr(optim, "SPECS", (spec,))
    monkeypatch.setattr(optim, "DTYPES", (torch.float32,))
    monkeypatch.setattr(runner, "load", lambda name: optim.SUITE)
    payload = runner.run(Context(device=cpu, smoke=True), ["optim"], progress=False)
    for case in payload["cases"]:
        contenders = case["contenders"]
        assert contenders[optim.FOREACH]["role"] == INVALID and contenders[optim.FOR_LOOP]["role"] == TORCH
        assert case["summary"]["best_torch"] == optim.FOR_LOOP
    wrong = payload["notes"]["optim"]["torch paths left out as wrong (timed, never the baseline)"]
    assert list(wrong) == [f"SGD(lr=0.01, momentum=0.9) float32 {optim.FOREACH}"]


def test_unknown_suite_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown suite"):
        runner.run(Context(device=torch.device("cpu"), smoke=True), ["nope"], progress=False)


def test_progress_bar_on_a_pipe_prints_tenths() -> None:
    stream = io.StringIO()
    bar = report.Progress(20, stream=stream)
    bar.set_label("case a")
    for _ in range(20):
        bar.advance()
    bar.close()
    lines = stream.getvalue().splitlines()
    # One line per tenth reached (0%..100%), never one per round.
    assert len(lines) == 11
    assert lines[-1].startswith("[" + "#" * 30 + "] 100%")
    assert all("case a" in line for line in lines)


def test_cache_is_scrubbed_before_every_timed_call() -> None:
    from fastopt.bench.harness import CacheScrubber, run_interleaved

    calls: list[str] = []
    contenders = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    stats = run_interleaved(contenders, torch.device("cpu"), reps=3, warmup=1,
                            before_each=lambda: calls.append("scrub"))
    assert set(stats) == {"a", "b"}
    timed = calls[2:]  # after the warm-up round, which is not scrubbed
    assert timed[0::2] == ["scrub"] * 6 and sorted(timed[1::2]) == ["a"] * 3 + ["b"] * 3
    scrubber = CacheScrubber(torch.device("cpu"))
    assert scrubber.buffer.numel() * 4 >= 64 * 2**20
    # It only reads: a writing scrub leaves dirty lines for the timed call to write back.
    before = scrubber.buffer.clone()
    scrubber()
    assert torch.equal(scrubber.buffer, before)


def test_graph_replayed_case_keeps_fastopt_and_torch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-graph version of a case: same work, extras and references left out, each kept call captured.

    The capture itself is stubbed (this runs on the CPU); it records which
    calls were handed to it, and its replay runs the call.
    """
    from fastopt.bench import suite as suite_module
    from fastopt.bench.suite import EXTRA, REFERENCE, graph_replayed, with_graph_replays

    ran: list[str] = []
    captured: list[str] = []

    def setup() -> dict:
        return {name: (lambda name=name: ran.append(name)) for name in ("fastopt", "torch", "extra", "copy")}

    def fake_capture(fn):
        fn()  # stands for the warm-up and the captured call
        captured.append(ran[-1])
        return fn

    monkeypatch.setattr(suite_module, "cuda_graph_replay", fake_capture)
    case = Case("toy", 100, setup, {"fastopt": FASTOPT, "torch": TORCH, "extra": EXTRA, "copy": REFERENCE},
                params={"dtype": "float32"}, nbytes_of={"copy": 50})
    graphed = graph_replayed(case)
    assert graphed.name == "toy [CUDA graph]"
    assert graphed.roles == {"fastopt": FASTOPT, "torch": TORCH}
    assert graphed.params == {"dtype": "float32", "timing": "CUDA graph replay"}
    assert graphed.nbytes == 100 and graphed.nbytes_of == {}
    calls = graphed.setup()
    assert sorted(calls) == ["fastopt", "torch"] and sorted(captured) == ["fastopt", "torch"]
    ran.clear()
    calls["torch"]()
    assert ran == ["torch"]
    # Only CUDA runs that are not smoke runs get the graph versions.
    assert with_graph_replays([case], Context(device=torch.device("cpu"))) == [case]
    assert with_graph_replays([case], Context(device=torch.device("cuda"), smoke=True)) == [case]
    both = with_graph_replays([case], Context(device=torch.device("cuda")))
    assert [c.name for c in both] == ["toy", "toy [CUDA graph]"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_repeats_a_forward_and_backward() -> None:
    """A captured module step replays its kernels: the gradient it accumulates grows by one step per replay."""
    from fastopt.bench.harness import cuda_graph_replay

    import fastopt.nn

    module = fastopt.nn.GroupNorm(2, 4).cuda()
    x = torch.randn(2, 4, 3, 3, device="cuda")
    dy = torch.randn_like(x)

    def step() -> None:
        module(x).backward(dy)

    replay = cuda_graph_replay(step, warmup=1)  # a capture records the kernels without running them
    torch.cuda.synchronize()
    expected = dy.sum(dim=(0, 2, 3))
    torch.testing.assert_close(module.bias.grad, expected)  # the warm-up's step only
    replay()
    replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(module.bias.grad, 3 * expected)


def test_readme_flags_a_report_of_older_code_only() -> None:
    """A report is committed after its run: the same code is no reason to flag
    it; unknown commits and missing git give no flag either."""
    assert readme._code_changes_since(None) is None
    assert readme._code_changes_since("HEAD") is None
    assert readme._code_changes_since("0" * 40) is None
    first = readme._git("rev-list", "--max-parents=0", "HEAD")
    if first is None or first.returncode != 0:
        pytest.skip("not a git checkout")
    assert readme._code_changes_since(first.stdout.split()[0]) > 0  # the code has grown since the first commit
