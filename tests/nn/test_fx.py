"""torch.fx.symbolic_trace of models on fastopt modules: torch's norm and dropout
modules trace (fx keeps them as leaves); a model converted to fastopt's must too,
and its traced graph must compute, and update buffers, as the model does, in
either mode."""

from __future__ import annotations

import copy

import pytest
import torch

import fastopt.nn


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.GroupNorm(2, 8),
        torch.nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
        torch.nn.Dropout2d(0.1),
        torch.nn.BatchNorm2d(8, momentum=None),
        torch.nn.SyncBatchNorm(8),
        torch.nn.Flatten(),
        torch.nn.LayerNorm(8 * 6 * 6),
    )
    return fastopt.nn.convert(model).to(device)


def _assert_same_runs(traced: torch.nn.Module, eager: torch.nn.Module, device: str) -> None:
    x = torch.randn(4, 3, 8, 8, device=device)
    for _ in range(3):  # buffers (running stats, num_batches_tracked) evolve alike
        torch.manual_seed(7)  # the same dropout masks
        expected = eager(x)
        torch.manual_seed(7)
        torch.testing.assert_close(traced(x), expected)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_modules_stay_leaves_as_torch_modules_do(device, train):
    """fx's default rule keeps torch.nn's modules as leaves: the traced graph
    calls them, so their train/eval mode is read when it runs. fastopt's too."""
    eager = _model(device).train(train)
    traced = torch.fx.symbolic_trace(copy.deepcopy(eager))
    calls = {n.target: n for n in traced.graph.nodes if n.op == "call_module"}
    for name, module in eager.named_children():
        if type(module).__module__.startswith("fastopt."):
            assert name in calls, name
            assert type(traced.get_submodule(name)) is type(module)
    assert not [n for n in traced.graph.nodes if n.op == "call_function"]
    _assert_same_runs(traced, eager, device)
    assert traced.state_dict().keys() == eager.state_dict().keys()
    for name, value in traced.state_dict().items():
        torch.testing.assert_close(value, eager.state_dict()[name], msg=name)
    # The mode switches after tracing, as with torch's modules.
    traced.train(not train)
    eager.train(not train)
    _assert_same_runs(traced, eager, device)


def test_subclasses_and_hooked_modules_are_traced_through(device):
    """Where fx would trace through a torch module, it traces through fastopt's:
    a user's subclass (whose forward calls fastopt's), a module with forward
    hooks (which fx has traced before the module's call), and under a tracer
    that overrides call_module. Each traced graph computes as the model does."""

    class Scaled(fastopt.nn.LayerNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    class CallsThrough(torch.fx.Tracer):
        def call_module(self, m, forward, args, kwargs):
            return forward(*args, **kwargs)

    hooked = fastopt.nn.LayerNorm(5).to(device)
    hooked.register_forward_pre_hook(lambda m, args: (args[0] + 1,))
    hooked.register_forward_hook(lambda m, args, out: out * 3)
    x = torch.randn(2, 5, device=device)
    for model, tracer in (
        (torch.nn.Sequential(torch.nn.Linear(5, 5), Scaled(5)), torch.fx.Tracer()),
        (torch.nn.Sequential(torch.nn.Linear(5, 5), hooked), torch.fx.Tracer()),
        (torch.nn.Sequential(torch.nn.Linear(5, 5), fastopt.nn.BatchNorm1d(5).eval()), CallsThrough()),
    ):
        model = model.to(device)
        traced = torch.fx.GraphModule(model, tracer.trace(model))
        assert not [n for n in traced.graph.nodes if n.op == "call_module" and n.target == "1"]
        torch.testing.assert_close(traced(x), model(x))


class _ThroughEverything(torch.fx.Tracer):
    """A tracer with its own rule: it traces through every module."""

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return False


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_traced_through_model_matches_eager(device, train):
    """A tracer that traces through modules records one node per fastopt
    functional (they dispatch __torch_function__), not their Python bodies run
    on proxies; the graph computes, and updates buffers, as the model does."""
    eager = _model(device).train(train)
    root = copy.deepcopy(eager)
    traced = torch.fx.GraphModule(root, _ThroughEverything().trace(root))
    called = {n.target.__name__ for n in traced.graph.nodes if n.op == "call_function"}
    assert {"_batch_norm_module", "dropout", "group_norm", "instance_norm", "dropout2d", "layer_norm"} <= called
    _assert_same_runs(traced, eager, device)
    # The traced module holds the attributes its graph reads: all but
    # InstanceNorm's num_batches_tracked, which InstanceNorm never counts.
    ours, ref = traced.state_dict(), eager.state_dict()
    assert set(ref) - set(ours) == {"5.num_batches_tracked"}
    for name in ours:
        torch.testing.assert_close(ours[name], ref[name], msg=name)
    if train:
        assert int(traced.get_submodule("7").num_batches_tracked) == 3


def test_a_traced_root_module_is_traced_through(device):
    """symbolic_trace(module) of one fastopt module traces its forward, as it
    does torch's (a root calling itself as a leaf would recurse)."""
    m = fastopt.nn.BatchNorm2d(3).to(device).eval()
    traced = torch.fx.symbolic_trace(m)
    assert not [n for n in traced.graph.nodes if n.op == "call_module"]
    x = torch.randn(2, 3, 4, 4, device=device)
    torch.testing.assert_close(traced(x), m(x))


def test_functionals_offer_torch_function(device):
    """A tensor subclass with __torch_function__ sees fastopt's functionals called,
    as it sees torch.nn.functional's."""
    seen = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return super().__torch_function__(func, types, args, kwargs or {})

    x = torch.randn(2, 4, 5, device=device).as_subclass(Logged)
    fastopt.nn.functional.group_norm(x, 2)
    fastopt.nn.functional.layer_norm(x, (5,))
    fastopt.nn.functional.dropout(x, 0.5, training=False)
    assert seen[0] == "group_norm" and "layer_norm" in seen and "dropout" in seen


@pytest.mark.parametrize(
    "module,shape",
    [
        (lambda: fastopt.nn.Dropout2d(0.5), (2, 3, 2, 2)),
        (lambda: fastopt.nn.InstanceNorm1d(4, track_running_stats=True), (2, 4, 5)),
    ],
    ids=["dropout2d", "instance_norm"],
)
def test_jit_trace_warns_of_shape_constants(module, shape):
    """torch.jit.trace records the sizes fastopt's ops take as Python ints as
    constants; in training the trace is then only right for the traced shape,
    which a TracerWarning says (not a silently wrong result elsewhere)."""
    with pytest.warns(torch.jit.TracerWarning, match="constant of this trace"):
        torch.jit.trace(module().train(), (torch.randn(shape),), check_trace=False)


def test_jit_traced_batch_norm_counts_each_batch():
    """BatchNorm's op reads the count of values per channel (running_var's
    correction) from x itself, so a trace taken on one batch size updates the
    running variance right on another, and fastopt warns of no constant (torch's
    own batch-size check still warns that it converts a size to a bool)."""
    import warnings

    traced_bn, eager = fastopt.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        traced = torch.jit.trace(traced_bn.train(), (torch.randn(3, 4),), check_trace=False)
    assert not [w for w in seen if "constant of this trace" in str(w.message)]
    traced_bn.reset_running_stats()
    x = torch.randn(7, 4)
    torch.testing.assert_close(traced(x), eager(x))
    torch.testing.assert_close(traced_bn.running_var, eager.running_var)
    torch.testing.assert_close(traced_bn.running_mean, eager.running_mean)
