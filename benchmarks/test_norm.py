"""Normalization forward+backward: fastopt against torch."""

import pytest
from _cases import params, run

CASES = [
    "GroupNorm(32) (32, 64, 56, 56) NCHW",
    "GroupNorm(32) (32, 64, 56, 56) NHWC",  # channels_last is handled in place
    "InstanceNorm2d(affine) (32, 64, 56, 56) NCHW",
    "LayerNorm(768) (4096, 768)",
]


@pytest.mark.parametrize(("case", "contender"), params("norm", CASES))
def test_norm_forward_backward(benchmark, case, contender):
    run(benchmark, case, contender)
