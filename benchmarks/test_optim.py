"""optimizer.step(): fastopt and every torch path, one pytest-benchmark group per case."""

import pytest
from _cases import params, run

CASES = [
    "Adam flat16M float32",  # one large tensor: pure bandwidth
    "Adam resnet50ish float32",  # 161 tensors: per-tensor overheads show
    "AdamW resnet50ish bfloat16",  # 16-bit storage, float32 math
    "SGD(lr=0.01, momentum=0.9) resnet50ish float32",
    "RMSprop(centered=True, momentum=0.9) resnet50ish float32",  # the most state
    "Adagrad resnet50ish float32",
]


@pytest.mark.parametrize(("case", "contender"), params("optim", CASES))
def test_optim_step(benchmark, case, contender):
    run(benchmark, case, contender)
