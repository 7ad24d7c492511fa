"""``__torch_function__`` dispatch for fastopt's functionals, as torch.nn.functional has it.

torch's functionals first hand their call to any argument that overrides
``__torch_function__``: a tensor subclass, or a ``torch.fx.Proxy`` during
symbolic tracing. That is what lets ``torch.fx.symbolic_trace`` record
``F.batch_norm(...)`` as one node instead of running its Python body on
proxies, whose shape checks and branches cannot be traced. fastopt's
functionals do the same, so a model converted to fastopt modules still traces.

The same wrapper hands the call to a torch twin under ``torch.func``
transforms (see :func:`dispatches_torch_function`).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Optional, TypeVar

import torch
from torch.autograd import forward_ad
from torch.overrides import handle_torch_function, has_torch_function

Fn = TypeVar("Fn", bound=Callable[..., Any])


def _under_func_transforms() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, jvp, jacrev, functionalize,
    ...) or a forward-mode AD level (``torch.autograd.forward_ad.dual_level``) is active.

    Under torch.compile the check is traced too (dynamo makes it a constant
    of the graph): a transform inside a compiled function gets the twins.
    """
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def check_tensor_input(op: str, input: Any) -> None:
    """torch's TypeError for an ``input`` that is not a tensor, where torch's
    functional hands it to ATen's argument parser before using it (dropout,
    layer_norm, evaluation batch_norm; the others fail on an attribute, as
    fastopt's do)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}")


def dispatches_torch_function(*, twin: Optional[Callable[..., Any]]) -> Callable[[Fn], Fn]:
    """Decorate a functional: first offered to any argument with a
    ``__torch_function__`` override, then, under ``torch.func`` transforms or
    forward-mode AD, computed by ``twin``, its equivalent made of torch's own
    functionals.

    fastopt's autograd is C++ (``torch::autograd::Function``), which functorch
    refuses ("cannot use C++ torch::autograd::Function with functorch
    transforms") and which has no forward-mode formula; nor do its ops have
    batching rules. Inside ``torch.func.grad``, ``vmap``, ``jvp``, ``jacrev``,
    ``functionalize`` and the rest, and inside a ``dual_level``, the twin gives
    torch's results at torch's speed (dropout draws torch's masks there).
    Elsewhere the check costs about 0.2 us a call. ``twin=None`` is for a
    function that reaches fastopt's ops only through functionals that have twins.
    """

    def decorate(fn: Fn) -> Fn:
        @functools.wraps(fn)
        def dispatching(*args: Any, **kwargs: Any) -> Any:
            relevant = args + tuple(kwargs.values()) if kwargs else args
            if has_torch_function(relevant):
                return handle_torch_function(dispatching, relevant, *args, **kwargs)
            if twin is not None and _under_func_transforms():
                return twin(*args, **kwargs)
            return fn(*args, **kwargs)

        return dispatching  # type: ignore[return-value]

    return decorate


Forward = TypeVar("Forward", bound=Callable[..., Any])


def fx_leaf(forward: Forward) -> Forward:
    """Decorate a module's ``forward``: under ``torch.fx.symbolic_trace``, the
    module's call is one ``call_module`` node, as a torch.nn module's is.

    fx's default rule keeps torch.nn's modules as leaves, so a traced graph
    runs their forward, in the train or eval mode they have then. fastopt's
    modules live outside torch.nn, and that rule traces through them: their
    mode would become a constant of the graph, which ``gm.eval()`` could no
    longer change (batch statistics and dropout in evaluation). So fastopt's
    own classes are leaves too, where torch's would be: not a user's
    subclass (torch's rule goes by the class's module; its forward may call
    this one, which would then run twice), not the module traced from (the
    root), and not under a tracer with its own rule (FX quantization's). The
    leaf is decided here, inside the module's call, where fx decides it
    before: a module with forward hooks, which fx has traced by now and
    would run again, is traced through.
    """

    @functools.wraps(forward)
    def leaf_forward(self: torch.nn.Module, input: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(input, torch.fx.Proxy) and _traced_as_leaf(self, input.tracer):
            tracer = input.tracer
            return tracer.create_proxy("call_module", tracer.path_of_module(self), (input, *args), kwargs)
        return forward(self, input, *args, **kwargs)

    return leaf_forward  # type: ignore[return-value]


def _traced_as_leaf(module: torch.nn.Module, tracer: torch.fx.Tracer) -> bool:
    """Whether fx, under its default rules, would keep ``module`` as a leaf (see fx_leaf)."""
    hooks = torch.nn.modules.module
    return (
        type(module).__module__.startswith("fastopt.")
        and type(tracer).is_leaf_module is torch.fx.Tracer.is_leaf_module
        and type(tracer).call_module is torch.fx.Tracer.call_module
        and module is not getattr(tracer, "root", None)
        and not (module._forward_hooks or module._forward_pre_hooks)
        and not (hooks._global_forward_hooks or hooks._global_forward_pre_hooks)
    )


def fx_tracing(input: Any) -> bool:
    """Whether ``input`` is a torch.fx proxy: its dimensions are not known while
    tracing, so a module's Python-level shape checks must wait for the traced
    graph to run (where the functional's own checks do run)."""
    return isinstance(input, torch.fx.Proxy)


def warn_shape_constant(what: str) -> None:
    """Under torch.jit.trace, warn that ``what``, a size taken from the input's
    shape and passed to an op as a Python int, becomes a constant of the trace.

    torch's own kernels read such sizes from the tensor inside the op; a trace
    of fastopt's is exact only for inputs of the traced shape. torch.compile and
    torch.export keep these sizes symbolic (the ops take them as SymInt).
    """
    if torch.jit.is_tracing():
        warnings.warn(
            f"fastopt: {what} comes from the input's shape and is a constant of this trace: the traced "
            "module is only correct for inputs of the traced shape (torch.compile and torch.export "
            "keep it symbolic)",
            torch.jit.TracerWarning,
            stacklevel=3,
        )
