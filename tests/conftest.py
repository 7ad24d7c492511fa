"""Shared fixtures: every test is written once and runs on each device present."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import fastopt

from .cpu_isa import cpu_capability, supported_isas


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available() and fastopt.build_info()["cuda"]:
        devices.append("cuda")
    return devices


DEVICES = available_devices()


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Lets a test change torch's intra-op thread count, and restores it after."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_threads(restore_threads: None) -> None:
    """Two intra-op threads, so that two work items of one op call run at once."""
    torch.set_num_threads(2)


@pytest.fixture(params=supported_isas())
def each_cpu_isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test once under each CPU kernel variant this machine supports
    (csrc/cpu/isa.h): the baseline and AVX2 builds differ from AVX-512 in their
    loops and sums, and are what a CPU without AVX-512 runs. A test on another
    device runs once, under the default variant."""
    isa = request.param
    if request.node.callspec.params.get("device", "cpu") != "cpu" and isa != supported_isas()[-1]:
        pytest.skip("the CPU kernel variants apply to CPU tensors only")
    with cpu_capability(isa):
        yield isa
