"""torch.jit.script of fastopt's modules compiles torch's version of each (fastopt/nn/_scripting.py)."""

from __future__ import annotations

import pytest
import torch

import fastopt.nn

MODULES = {
    "BatchNorm1d": lambda nn: nn.BatchNorm1d(3),
    "BatchNorm2d": lambda nn: nn.BatchNorm2d(3),
    "InstanceNorm2d": lambda nn: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
    "GroupNorm": lambda nn: nn.GroupNorm(1, 3),
    "LayerNorm": lambda nn: nn.LayerNorm(5),
    "Dropout": lambda nn: nn.Dropout(0.3),
    "Dropout2d": lambda nn: nn.Dropout2d(0.3),
}


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(MODULES))
def test_scripted_module_computes_as_torch_scripted(name, training):
    ref, ours = MODULES[name](torch.nn), MODULES[name](fastopt.nn)
    ours.load_state_dict(ref.state_dict())
    ref.train(training)
    ours.train(training)
    x = torch.randn(2, 3) if name == "BatchNorm1d" else torch.randn(2, 3, 4, 5)
    scripted, scripted_ref = torch.jit.script(ours), torch.jit.script(ref)
    torch.manual_seed(1)
    y = scripted(x)
    torch.manual_seed(1)
    y_ref = scripted_ref(x)
    torch.testing.assert_close(y, y_ref)  # dropout too: torch's kernel under the same seed
    for key, value in ref.state_dict().items():  # running statistics updated alike
        torch.testing.assert_close(scripted.state_dict()[key], value)


def test_scripted_model_shares_the_parameters():
    model = fastopt.nn.convert(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.GroupNorm(2, 4))
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), expected)
    with torch.no_grad():
        model[1].weight.fill_(2.0)
    assert scripted[1].weight[0].item() == 2.0


def test_fused_activation_is_refused_with_a_reason():
    with pytest.raises(RuntimeError, match="has no fused activation"):
        torch.jit.script(fastopt.nn.GroupNorm(1, 3, activation="silu"))
