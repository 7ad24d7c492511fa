"""``__torch_function__`` dispatch for fastopt's functionals, as torch.nn.functional has it.

torch's functionals first hand their call to any argument that overrides
``__torch_function__``: a tensor subclass, or a ``torch.fx.Proxy`` during
symbolic tracing. That is what lets ``torch.fx.symbolic_trace`` record
``F.batch_norm(...)`` as one node instead of running its Python body on
proxies, whose shape checks and branches cannot be traced. fastopt's
functionals do the same, so a model converted to fastopt modules still traces.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

import torch
from torch.overrides import handle_torch_function, has_torch_function

Fn = TypeVar("Fn", bound=Callable[..., Any])


def dispatches_torch_function(fn: Fn) -> Fn:
    """``fn``, first offered to any argument with a ``__torch_function__`` override."""

    @functools.wraps(fn)
    def dispatching(*args: Any, **kwargs: Any) -> Any:
        relevant = args + tuple(kwargs.values()) if kwargs else args
        if has_torch_function(relevant):
            return handle_torch_function(dispatching, relevant, *args, **kwargs)
        return fn(*args, **kwargs)

    return dispatching  # type: ignore[return-value]


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
