"""torch.compile traces fastopt optimizers without graph breaks."""

from __future__ import annotations

import pytest
import torch

from fastopt.optim import SGD, Adagrad, AdamW, RMSprop


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(device)


def test_compiled_training_step_matches_eager(device):
    """A whole training step (forward, backward, fused update) in one fullgraph compile.

    The lr is a tensor, as torch recommends for compiled optimizers, so that a
    scheduler changing it does not force a recompile.
    """
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("tracing loss.backward() in one graph needs torch._dynamo.config.trace_autograd_ops")
    x = torch.randn(32, 8, device=device)
    y = torch.randn(32, 1, device=device)
    results = []
    for compiled in (False, True):
        model = _model(device)
        opt = AdamW(model.parameters(), lr=torch.tensor(0.01), weight_decay=0.1)

        def train_step():
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        if compiled:
            torch._dynamo.reset()
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                step = torch.compile(train_step, fullgraph=True)
                losses = []
                for _ in range(4):
                    opt.zero_grad()  # dynamo does not trace Optimizer.zero_grad
                    losses.append(step().item())
        else:
            losses = []
            for _ in range(4):
                opt.zero_grad()
                losses.append(train_step().item())
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "cls,config",
    [
        (AdamW, {}),
        (RMSprop, {}),
        (RMSprop, {"centered": True, "momentum": 0.9, "weight_decay": 0.1}),
        (SGD, {"momentum": 0.9, "nesterov": True}),
        (Adagrad, {"lr_decay": 0.1}),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else repr(x),
)
def test_compiled_step_fullgraph(cls, config, device):
    """opt.step() alone, with a tensor lr, compiles with fullgraph=True (inductor) and matches eager.

    For SGD this covers both of the op's variants: the first step creates
    the momentum buffers (is_first_step), later steps decay them.
    """
    ref_model, model = _model(device), _model(device)
    ref_opt = cls(ref_model.parameters(), lr=torch.tensor(0.01), **config)
    opt = cls(model.parameters(), lr=torch.tensor(0.01), **config)
    x = torch.randn(4, 8, device=device)
    torch._dynamo.reset()
    compiled_step = torch.compile(opt.step, fullgraph=True)
    for _ in range(3):
        for m in (ref_model, model):
            m.zero_grad()
            m(x).sum().backward()
        ref_opt.step()
        compiled_step()
    for a, b in zip(ref_model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(ref_model.parameters(), model.parameters()):
        for key, value in ref_opt.state[a].items():
            torch.testing.assert_close(opt.state[b][key], value)
