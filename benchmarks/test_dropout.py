"""Dropout forward and forward+backward: fastopt against torch's paths."""

import pytest
from _cases import params, run

CASES = ["dropout forward", "dropout forward+backward"]


@pytest.mark.parametrize(("case", "contender"), params("dropout", CASES))
def test_dropout(benchmark, case, contender):
    # torch's CPU dropout takes about 0.25 s per call at this size.
    run(benchmark, case, contender, rounds=5)
