"""The CPU output cache: large op outputs reuse freed blocks, within a limit."""

import os
import subprocess
import sys

import pytest
import torch

import fastopt
import fastopt.nn.functional as F

BIG = 2**20  # 4 MB of float32: above the cache's 1 MB threshold


@pytest.fixture
def fresh_cache():
    limit = fastopt.cpu_cache_stats()["limit_bytes"]
    fastopt.empty_cpu_cache()
    yield
    fastopt.set_cpu_cache_limit(limit >> 20)
    fastopt.empty_cpu_cache()


def test_freed_output_is_reused(fresh_cache):
    x = torch.randn(BIG)
    seed = torch.tensor([1, 2])
    y = torch.ops.fastopt.dropout(x, seed, 0.5)
    before = fastopt.cpu_cache_stats()
    ptr = y.data_ptr()
    del y  # back to the cache
    assert fastopt.cpu_cache_stats()["cached_bytes"] >= x.nbytes
    y2 = torch.ops.fastopt.dropout(x, seed, 0.5)
    after = fastopt.cpu_cache_stats()
    assert y2.data_ptr() == ptr and after["hits"] == before["hits"] + 1
    # Reused memory holds a correct result (every element is written).
    assert torch.equal(y2, torch.ops.fastopt.dropout(x, seed, 0.5))


def test_limit_and_empty(fresh_cache):
    x = torch.randn(BIG)
    fastopt.set_cpu_cache_limit(0)  # nothing is kept
    y = F.dropout(x, 0.5)
    del y
    assert fastopt.cpu_cache_stats()["cached_bytes"] == 0
    fastopt.set_cpu_cache_limit(64)
    y = F.dropout(x, 0.5)
    del y
    assert fastopt.cpu_cache_stats()["cached_bytes"] > 0
    fastopt.empty_cpu_cache()
    assert fastopt.cpu_cache_stats()["cached_bytes"] == 0
    with pytest.raises(ValueError, match=">= 0"):
        fastopt.set_cpu_cache_limit(-1)
    with pytest.raises(TypeError, match="int"):
        fastopt.set_cpu_cache_limit(1.5)  # not silently 1 MB


@pytest.mark.parametrize("value,limit", [("256", 256 << 20), ("0", 0), ("abc", None), ("1GB", None), ("-1", None)])
def test_limit_from_the_environment(value, limit):
    """FASTOPT_CPU_CACHE_MB is a whole number of megabytes; anything else is an
    error that names the variable, not a silently different limit."""
    script = "import fastopt; print(fastopt.cpu_cache_stats()['limit_bytes'])"
    env = {**os.environ, "FASTOPT_CPU_CACHE_MB": value}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    if limit is None:
        assert done.returncode != 0
        assert "ValueError: FASTOPT_CPU_CACHE_MB must be a whole number of megabytes" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) == limit


def test_outputs_keep_layout_and_small_ones_bypass(fresh_cache):
    x = torch.randn(8, 64, 32, 32).to(memory_format=torch.channels_last)
    y = F.group_norm(x, 8)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, torch.nn.functional.group_norm(x, 8))
    stats = fastopt.cpu_cache_stats()
    small = F.dropout(torch.randn(1000), 0.5)  # below the threshold: torch's allocator
    assert small.shape == (1000,)
    assert fastopt.cpu_cache_stats()["misses"] == stats["misses"]


def test_tensors_from_the_cache_behave_like_any_other(fresh_cache, tmp_path):
    x = torch.randn(BIG)
    y = F.dropout(x, 0.5)
    torch.save(y, tmp_path / "y.pt")
    assert torch.equal(torch.load(tmp_path / "y.pt"), y)
    expected = y.clone()
    y.resize_(2 * BIG)  # a resize goes through the same allocator and keeps the data
    assert y.numel() == 2 * BIG and torch.equal(y[:BIG], expected)
    y[BIG:] = 1.0  # the grown half is uninitialised, as any resize_ leaves it (NaN bit patterns included)
    assert torch.equal(torch.from_numpy(y.numpy()), y)  # (numpy() pins the storage's size, as for any tensor)
