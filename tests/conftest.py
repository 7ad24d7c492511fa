"""Shared fixtures: every test is written once and runs on each device present."""

from __future__ import annotations

import pytest
import torch

import fastopt


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
