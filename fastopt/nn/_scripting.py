"""TorchScript for fastopt's modules: ``torch.jit.script`` compiles torch's own version."""

from __future__ import annotations

import torch


class ScriptsAsTorch:
    """Mixin: ``torch.jit.script`` scripts the module as the torch class it subclasses.

    fastopt's forwards are Python over custom ops and checks that TorchScript
    cannot compile, so scripting them failed with errors about fastopt's
    internals. ``torch.jit.script`` first calls ``__prepare_scriptable__``;
    this returns the same module as an instance of its torch class, sharing
    its parameters, buffers and settings. A scripted model therefore runs
    torch's implementation: the same results up to rounding, and for dropout,
    torch's masks. (``torch.jit.trace``, ``torch.compile`` and
    ``torch.export`` keep fastopt's kernels.) torch.jit.script puts what this
    returns into the scripted module's parents, so after scripting a model
    its eager copy holds these torch modules too: same parameters and
    buffers, torch's kernels.
    """

    def __prepare_scriptable__(self) -> torch.nn.Module:
        torch_cls = next(c for c in type(self).__mro__ if c.__module__.startswith("torch.nn."))
        twin = torch_cls.__new__(torch_cls)
        # A shallow copy: the parameter, buffer and submodule dicts are shared.
        twin.__dict__ = dict(self.__dict__)
        return twin
