"""Sparse gradients (nn.Embedding(sparse=True)), which torch's SGD and Adagrad accept.

fastopt updates those parameters as torch does, with the same state, and
keeps the dense ones fused. Adam, AdamW and RMSprop refuse them with torch's
message (tested with each optimizer).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import fastopt.optim

STEPS = 10

CASES = [
    ("sgd", fastopt.optim.SGD, torch.optim.SGD, {"lr": 0.1}),
    ("sgd-momentum", fastopt.optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1}),
    ("sgd-nesterov", fastopt.optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("sgd-maximize", fastopt.optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.5, "maximize": True}),
    ("adagrad", fastopt.optim.Adagrad, torch.optim.Adagrad, {"lr": 0.1}),
    ("adagrad-decay", fastopt.optim.Adagrad, torch.optim.Adagrad,
     {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "maximize": True}),
]  # fmt: skip


class Model(torch.nn.Module):
    """A sparse embedding bag feeding a dense layer: both kinds of gradient in one step."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8, sparse=True)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


def _batches(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    # Repeated ids within a batch: the sparse gradient has duplicate indices.
    return [
        (torch.randint(0, 20, (6, 5), generator=gen).to(device), torch.randn(6, 3, generator=gen).to(device))
        for _ in range(STEPS)
    ]


def _train(model: Model, opt: torch.optim.Optimizer, batches: list[Any]) -> None:
    for ids, target in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(ids), target).backward()
        assert model.embed.weight.grad.is_sparse
        opt.step()


def _pair(
    ours: type, theirs: type, device: str, hyper: dict[str, Any], **extra: Any
) -> tuple[Model, torch.optim.Optimizer, Model, torch.optim.Optimizer]:
    """One model with a fastopt optimizer, and an identical one with torch's (for-loop path)."""
    model = Model().to(device)
    ref = copy.deepcopy(model)
    return model, ours(model.parameters(), **hyper, **extra), ref, theirs(ref.parameters(), foreach=False, **hyper)


def _assert_same_params(model: Model, ref: Model) -> None:
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def _dense(t: Any) -> Any:
    return t.to_dense() if isinstance(t, torch.Tensor) and t.is_sparse else t


@pytest.mark.parametrize("name, ours, theirs, hyper", CASES, ids=[c[0] for c in CASES])
def test_matches_torch(name, ours, theirs, hyper, device):
    model, opt, ref, ref_opt = _pair(ours, theirs, device, hyper)
    batches = _batches(device)
    _train(model, opt, batches)
    _train(ref, ref_opt, batches)
    _assert_same_params(model, ref)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert opt.state[p].keys() == ref_opt.state[q].keys()
        for key in ref_opt.state[q]:
            ours_value, torch_value = _dense(opt.state[p][key]), _dense(ref_opt.state[q][key])
            if key == "step":
                # fastopt keeps CUDA step counters on the device, torch's for-loop Adagrad on the CPU
                ours_value, torch_value = ours_value.cpu(), torch_value.cpu()
            torch.testing.assert_close(ours_value, torch_value)


@pytest.mark.parametrize("name, ours, theirs, hyper", CASES, ids=[c[0] for c in CASES])
def test_checkpoint_loads_into_torch(name, ours, theirs, hyper, device):
    model = Model().to(device)
    batches = _batches(device)
    opt = ours(model.parameters(), **hyper)
    _train(model, opt, batches[:5])
    ref = copy.deepcopy(model)
    ref_opt = theirs(ref.parameters(), foreach=False, **hyper)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(model, opt, batches[5:])
    _train(ref, ref_opt, batches[5:])
    _assert_same_params(model, ref)


def test_amp_skip_and_unscale(device):
    """found_inf skips the sparse update too; grad_scale divides the sparse gradient."""
    model, opt, ref, ref_opt = _pair(fastopt.optim.SGD, torch.optim.SGD, device, {"lr": 0.1, "momentum": 0.9})
    ids, target = _batches(device)[0]
    scale = 1024.0
    torch.nn.functional.mse_loss(model(ids), target).mul(scale).backward()
    torch.nn.functional.mse_loss(ref(ids), target).backward()
    before = [p.detach().clone() for p in model.parameters()]

    opt.grad_scale = torch.tensor(scale, device=device)
    opt.found_inf = torch.tensor(1.0, device=device)
    opt.step()
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p, b, rtol=0, atol=0)

    opt.found_inf = torch.tensor(0.0, device=device)
    opt.step()
    ref_opt.step()
    _assert_same_params(model, ref)


def test_grad_scaler_end_to_end(device):
    """torch.amp.GradScaler, with one step overflowing: the same parameters and scale as torch."""
    model, opt, ref, ref_opt = _pair(fastopt.optim.SGD, torch.optim.SGD, device, {"lr": 0.1, "momentum": 0.9})
    runs = [(model, opt), (ref, ref_opt)]
    scalers = [torch.amp.GradScaler(device, init_scale=2.0**10) for _ in runs]
    for step, (ids, target) in enumerate(_batches(device)):
        for (module, optimizer), scaler in zip(runs, scalers):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(module(ids), target)
            if step == 3:
                loss = loss * float("inf")  # the scaler skips this step and halves its scale
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    assert scalers[0].get_scale() == scalers[1].get_scale() == 2.0**9
    _assert_same_params(model, ref)


def test_clipping_counts_sparse_gradients(device):
    model = Model().to(device)
    opt = fastopt.optim.SGD(model.parameters(), lr=0.1, max_grad_norm=1e9)
    ids, target = _batches(device)[0]
    torch.nn.functional.mse_loss(model(ids), target).backward()
    want = torch.linalg.vector_norm(torch.stack([p.grad.to_dense().norm() for p in model.parameters()]))
    opt.step()
    torch.testing.assert_close(opt.last_grad_norm.to(want.dtype), want)


@pytest.mark.parametrize("option", ["master_weights", "stochastic_rounding"])
def test_rounding_options_refuse_sparse_bf16_gradients(option):
    weight = torch.nn.Parameter(torch.randn(10, 4, dtype=torch.bfloat16))
    opt = fastopt.optim.SGD([weight], lr=0.1, **{option: True})
    weight.grad = torch.zeros(10, 4, dtype=torch.bfloat16).to_sparse()
    with pytest.raises(RuntimeError, match="master_weights and stochastic_rounding do not support sparse"):
        opt.step()


def test_stochastic_rounding_leaves_float32_sparse_gradients_alone():
    """The option rounds bfloat16 parameters only; a float32 embedding trains as in torch."""
    model, opt, ref, ref_opt = _pair(
        fastopt.optim.SGD, torch.optim.SGD, "cpu", {"lr": 0.1, "momentum": 0.9}, stochastic_rounding=True
    )
    batches = _batches("cpu")
    _train(model, opt, batches)
    _train(ref, ref_opt, batches)
    _assert_same_params(model, ref)


def _step_errors(cls: type, grad: torch.Tensor, **hyper: Any) -> list[str]:
    """The errors of one step with a sparse gradient, for cls and for torch's class of that name."""
    messages = []
    for make in (cls, getattr(torch.optim, cls.__name__)):
        p = torch.nn.Parameter(torch.zeros(grad.shape))
        opt = make([p], **hyper)
        p.grad = grad.clone()
        with pytest.raises(RuntimeError) as info:
            opt.step()
        messages.append(str(info.value))
    return messages


@pytest.mark.parametrize("cls", [fastopt.optim.Adam, fastopt.optim.AdamW, fastopt.optim.RMSprop])
def test_refused_with_torch_message(cls):
    ours, theirs = _step_errors(cls, torch.zeros(3).to_sparse())
    assert ours == theirs


@pytest.mark.parametrize("cls", [fastopt.optim.SGD, fastopt.optim.Adagrad])
def test_weight_decay_fails_as_in_torch(cls):
    """torch refuses weight decay on a sparse gradient; so does fastopt, with torch's error."""
    ours, theirs = _step_errors(cls, torch.ones(3).to_sparse(), lr=0.1, weight_decay=0.1)
    assert ours == theirs
