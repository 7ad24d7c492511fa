"""EMA update of the weights: fastopt against torch's foreach and for-loop lerp."""

import pytest
from _cases import params, run

CASES = ["EMA resnet50ish float32", "EMA resnet50ish bfloat16"]


@pytest.mark.parametrize(("case", "contender"), params("ema", CASES))
def test_ema_update(benchmark, case, contender):
    run(benchmark, case, contender)
