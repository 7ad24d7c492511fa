"""fastopt.nn.convert: swaps torch modules for fastopt's and keeps the model's function."""

import gc
import inspect

import pytest
import torch
from torch import nn

import fastopt.nn as fnn
from fastopt.nn.conversion import replacement_table


class _MyGroupNorm(nn.GroupNorm):
    """A user's subclass: it may override forward, so convert must leave it alone."""


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Sequential(nn.InstanceNorm2d(8, affine=True), _MyGroupNorm(4, 8)),
        nn.Flatten(),
        nn.LayerNorm(8 * 5 * 5),
        nn.Dropout(0.25),
        nn.Linear(8 * 5 * 5, 3),
    )


def test_every_exported_drop_in_is_in_the_table():
    table = replacement_table()
    for name in fnn.__all__:
        cls = getattr(fnn, name)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            torch_cls = getattr(nn, name)
            assert table[torch_cls] is cls


def test_convert_swaps_modules_and_keeps_parameters_and_output():
    torch.manual_seed(0)
    model = _model()
    with torch.no_grad():  # non-trivial affine parameters, so a lost weight would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    params_before = {name: p for name, p in model.named_parameters()}
    x = torch.randn(4, 3, 5, 5)
    model.eval()
    expected = model(x)

    converted = fnn.convert(model)
    assert converted is model
    assert type(model[1]) is fnn.GroupNorm
    assert type(model[3][0]) is fnn.InstanceNorm2d
    assert type(model[3][1]) is _MyGroupNorm  # subclasses are not replaced
    assert type(model[5]) is fnn.LayerNorm
    assert type(model[6]) is fnn.Dropout
    assert type(model[0]) is nn.Conv2d and type(model[7]) is nn.Linear
    assert not model.training and not model[1].training  # eval state carried over
    assert model[1].activation is None
    # The very same Parameter objects: an optimizer built before convert still works.
    for name, p in model.named_parameters():
        assert p is params_before[name]
    torch.testing.assert_close(model(x), expected)


def test_convert_replaces_a_root_module_and_keeps_training_state():
    torch.manual_seed(0)
    norm = nn.LayerNorm(6, elementwise_affine=True)
    norm.train()
    fast = fnn.convert(norm)
    assert type(fast) is fnn.LayerNorm and fast.training
    assert fast.weight is norm.weight
    x = torch.randn(3, 6, requires_grad=True)
    torch.testing.assert_close(fast(x), norm(x))
    # state_dict keys are unchanged, so checkpoints load either way.
    assert fast.state_dict().keys() == norm.state_dict().keys()


@pytest.mark.skipif(
    "bias" not in inspect.signature(nn.GroupNorm.__init__).parameters,
    reason="this torch's GroupNorm has no bias option (fastopt's passes it through)",
)
def test_group_norm_without_bias_matches_torch():
    torch.manual_seed(0)
    ref = nn.GroupNorm(2, 4, bias=False)
    fast = fnn.GroupNorm(2, 4, bias=False)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 5)
    assert fast.bias is None
    torch.testing.assert_close(fast(x), ref(x))


def _batch_norm_model() -> nn.Sequential:
    """BatchNorms of every kind, in float64: stacked training-mode norms over 5 samples amplify
    float32 rounding, and this test is about the conversion, not about rounding."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6, momentum=None),
        nn.ReLU(),
        nn.Sequential(nn.SyncBatchNorm(6, affine=False)),
        nn.Flatten(2),
        nn.BatchNorm1d(6, track_running_stats=False),
        nn.Flatten(),
        nn.BatchNorm1d(6 * 16),
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.train()
    model(torch.randn(5, 3, 4, 4, dtype=torch.float64))  # non-trivial running statistics and batch counts
    model(torch.randn(5, 3, 4, 4, dtype=torch.float64))
    return model


def test_convert_batch_norm_keeps_parameters_buffers_and_mode():
    model = _batch_norm_model()
    reference = _batch_norm_model()
    params = dict(model.named_parameters())
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model[1].eval()  # mixed train/eval states are kept module by module

    fnn.convert(model)
    assert type(model[1]) is fnn.BatchNorm2d and type(model[3][0]) is fnn.SyncBatchNorm
    assert type(model[5]) is fnn.BatchNorm1d and type(model[7]) is fnn.BatchNorm1d
    assert not model[1].training and model[3][0].training and model[7].training
    assert model[1].momentum is None and model[5].running_mean is None
    for name, p in model.named_parameters():
        assert p is params[name]
    for name, b in model.named_buffers():  # incl. running stats and num_batches_tracked
        torch.testing.assert_close(b, buffers[name])
    assert int(model[1].num_batches_tracked) == 2

    # Same function as the untouched torch model, in training (buffers updated alike) and eval.
    reference[1].eval()
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference(x))
    for (name, b), (_, b_ref) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, b_ref, msg=name)
    model.eval()
    reference.eval()
    torch.testing.assert_close(model(x), reference(x))


def test_hook_handles_taken_before_convert_still_work():
    """The converted module shares the hook dictionaries, so an earlier handle still removes its hook."""
    model = nn.Sequential(nn.BatchNorm1d(3), nn.LayerNorm(3))
    calls = []
    kept = model[0].register_forward_hook(lambda *args: calls.append("kept"))
    removed = model[0].register_forward_hook(lambda *args: calls.append("removed"))
    removed_with_kwargs = model[1].register_forward_pre_hook(lambda *args: calls.append("pre"), with_kwargs=True)
    fnn.convert(model)
    assert type(model[0]) is fnn.BatchNorm1d and type(model[1]) is fnn.LayerNorm
    removed.remove()
    removed_with_kwargs.remove()
    model(torch.randn(4, 3))
    assert calls == ["kept"]
    kept.remove()
    model(torch.randn(4, 3))
    assert calls == ["kept"]


def test_load_state_dict_pre_hooks_get_the_converted_module():
    """torch keeps a weak reference to the module in a load_state_dict pre-hook;
    after convert (the old module gone) the hook is called with the new one."""
    model = nn.Sequential(nn.BatchNorm2d(3))
    seen = []
    model[0].register_load_state_dict_pre_hook(lambda module, *args: seen.append(module))
    state = model.state_dict()
    fnn.convert(model)
    gc.collect()
    model.load_state_dict(state)
    assert seen == [model[0]] and type(seen[0]) is fnn.BatchNorm2d


def test_module_used_twice_is_converted_once():
    """One instance at two places (shared by module) stays one, converted, object."""
    bn = nn.BatchNorm1d(3)
    inner = nn.Sequential(bn)
    model = nn.Sequential(bn, nn.ReLU(), bn, inner, inner)
    fnn.convert(model)
    assert type(model[0]) is fnn.BatchNorm1d
    assert model[0] is model[2] is model[3][0] and model[3] is model[4]
    assert model[0].weight is bn.weight
