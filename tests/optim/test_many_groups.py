"""One op call per step across param groups (NOTE: [hyperparameter table]).

With a learning rate per layer, a model has hundreds of param groups. On the
CPU, fastopt merges the tensors of all groups that share a kernel layout into
one op call, with a per-tensor table of hyperparameters; these tests check
the result against torch and count the op calls with the profiler.
"""

from __future__ import annotations

import pytest
import torch

from fastopt.optim import SGD, Adagrad, Adam, AdamW, RMSprop

from .reference import assert_same_state, clone_params, random_grads, set_grads

# Per group, every hyperparameter that goes into the table differs.
OPTIMIZERS = [
    (Adam, torch.optim.Adam, "adam_", lambda i: {"lr": 1e-3 * (1 + i), "betas": (0.9 - 0.01 * i, 0.999 - 0.001 * i), "weight_decay": 0.01 * (i % 3), "eps": 1e-8 * (1 + i)}),
    (AdamW, torch.optim.AdamW, "adam_", lambda i: {"lr": 1e-3 * (1 + i), "weight_decay": 0.02 * i}),
    (SGD, torch.optim.SGD, "sgd_", lambda i: {"lr": 0.01 * (1 + i), "momentum": 0.5 + 0.05 * i, "dampening": 0.1 * (i % 2), "weight_decay": 0.01 * i}),
    (Adagrad, torch.optim.Adagrad, "adagrad_", lambda i: {"lr": 0.01 * (1 + i), "lr_decay": 0.01 * i, "weight_decay": 0.01 * (i % 2), "eps": 1e-10 * (1 + i)}),
    (RMSprop, torch.optim.RMSprop, "rmsprop_", lambda i: {"lr": 0.001 * (1 + i), "alpha": 0.9 + 0.01 * i, "eps": 1e-8 * (1 + i), "weight_decay": 0.01 * i, "momentum": 0.1 * (1 + i)}),
]
IDS = [o[0].__name__ for o in OPTIMIZERS]
SHAPES = [(7,), (64, 3), (), (1000,), (5, 5), (130,)]


def _groups(params, hparams):
    return [{"params": [p], **hparams(i)} for i, p in enumerate(params)]


def _op_calls(opt: torch.optim.Optimizer, op: str) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    return sum(e.count for e in prof.key_averages() if e.key == f"fastopt::{op}")


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=IDS)
def test_many_groups_match_torch_in_one_call(opt):
    ours_cls, ref_cls, op, hparams = opt
    ref_params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    ours_params = clone_params(ref_params)
    ref = ref_cls(_groups(ref_params, hparams), foreach=False)
    ours = ours_cls(_groups(ours_params, hparams))
    grads = random_grads(ref_params, 6)
    for step_grads in grads[:-1]:
        set_grads(ref_params, step_grads)
        set_grads(ours_params, step_grads)
        ref.step()
        ours.step()
    set_grads(ref_params, grads[-1])
    set_grads(ours_params, grads[-1])
    ref.step()
    # one call for the six groups: the launch-count claim, counted
    assert _op_calls(ours, op) == 1
    assert_same_state(ours, ref, ours_params, ref_params)


def test_groups_with_different_layouts_get_one_call_each():
    """amsgrad changes the state lists, so it splits the call; lr does not."""
    params = [torch.nn.Parameter(torch.randn(10)) for _ in range(6)]
    groups = [{"params": [p], "lr": 0.01 * (i + 1), "amsgrad": i % 2 == 0} for i, p in enumerate(params)]
    opt = Adam(groups)
    set_grads(params, [torch.randn(10) for _ in params])
    opt.step()
    assert _op_calls(opt, "adam_") == 2


def test_four_hundred_groups_one_call():
    params = [torch.nn.Parameter(torch.randn(16)) for _ in range(400)]
    opt = AdamW([{"params": [p], "lr": 1e-3 * 0.99**i} for i, p in enumerate(params)])
    set_grads(params, [torch.randn(16) for _ in params])
    opt.step()
    set_grads(params, [torch.randn(16) for _ in params])
    assert _op_calls(opt, "adam_") == 1


def test_hparams_table_errors():
    p = [torch.zeros(3)]
    kw = dict(lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, eps=1e-8, amsgrad=False,
              maximize=False, decoupled_weight_decay=False)  # fmt: skip
    lists = (p, [torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], [], [torch.tensor(0.0)])
    with pytest.raises(RuntimeError, match=r"hparams must have shape \[1, 5\]"):
        torch.ops.fastopt.adam_(*lists, hparams=torch.zeros(1, 4, dtype=torch.float64), **kw)
    with pytest.raises(TypeError, match="hparams must be float64"):
        torch.ops.fastopt.adam_(*lists, hparams=torch.zeros(1, 5), **kw)
