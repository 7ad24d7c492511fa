"""How one param group's tensors are split into fused op calls.

Every step the optimizer walks the group's parameters and puts each in the
bucket of its (device, dtype, new-state) layout, reusing the previous
parameter's bucket when the layout is the same. These tests make that layout
change from one parameter to the next, and check the result against torch:
dtypes that alternate (float32, float64, complex64) and a parameter whose
first gradient arrives late, while its neighbours already have state (for
SGD the new momentum buffer starts as the gradient, in an op call of its own).
"""

from __future__ import annotations

import pytest
import torch

import fastopt.optim as fo

from .reference import assert_same_state, clone_params, run_steps

OPTIMIZERS = [
    # With dampening, a new momentum buffer (buf = grad) differs from a zero one
    # updated (buf = (1 - dampening) * grad): only a bucket of its own gets it right.
    (fo.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    (fo.Adam, torch.optim.Adam, {"lr": 0.01, "amsgrad": True}),
    (fo.AdamW, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    (fo.Adagrad, torch.optim.Adagrad, {"lr": 0.05, "lr_decay": 0.01}),
    (fo.RMSprop, torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True}),
]
DTYPES = [torch.float32, torch.float32, torch.float64, torch.complex64, torch.float32, torch.float64]
# This parameter gets no gradient before step LATE_STEP; the one before it has
# its dtype, so only the new state tells their buckets apart.
LATE = 1
LATE_STEP = 3
STEPS = 7


def _groups(params: list[torch.nn.Parameter], grouped: bool) -> list:
    """All in one group, or in two whose lrs differ (one op call, a per-tensor hparams
    table). The first group's float32 tensors are split by a float64 one, so the
    group fills the float32 bucket in two runs."""
    if not grouped:
        return params
    return [
        {"params": [params[i] for i in (0, 1, 2, 4)]},
        {"params": [params[i] for i in (3, 5)], "lr": 0.002},
    ]


@pytest.mark.parametrize("grouped", [False, True], ids=["one_group", "two_groups"])
@pytest.mark.parametrize("ours_cls, ref_cls, config", OPTIMIZERS, ids=[o[0].__name__ for o in OPTIMIZERS])
def test_alternating_layouts_match_torch(ours_cls, ref_cls, config, grouped, device):
    ref_params = [torch.nn.Parameter(torch.randn(13, dtype=dt, device=device)) for dt in DTYPES]
    ours_params = clone_params(ref_params)
    grads = [
        [None if (i == LATE and s < LATE_STEP) else torch.randn_like(p) for i, p in enumerate(ref_params)]
        for s in range(STEPS)
    ]
    ref = ref_cls(_groups(ref_params, grouped), foreach=False, **config)
    ours = ours_cls(_groups(ours_params, grouped), **config)
    run_steps(ref, ref_params, grads)
    run_steps(ours, ours_params, grads)
    assert_same_state(ours, ref, ours_params, ref_params)
    # The late parameter has state, made by its first gradient.
    assert len(ours.state[ours_params[LATE]]) > 0
