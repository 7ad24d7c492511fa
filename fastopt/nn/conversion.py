"""``fastopt.nn.convert``: swap torch's modules in a model for fastopt's.

The table of replacements is built when ``convert`` runs, from the classes
``fastopt.nn`` exports at that moment: each fastopt module subclasses exactly
one ``torch.nn`` module, and that base is what it replaces. A module added to
``fastopt.nn`` later is picked up without touching this file.
"""

from __future__ import annotations

import weakref
from typing import Dict, Tuple, Type

import torch
from torch import nn


def _torch_counterpart(cls: type) -> Type[nn.Module] | None:
    """The ``torch.nn`` class that ``cls`` is the drop-in for, if any."""
    for base in cls.__mro__[1:]:
        if issubclass(base, nn.Module) and base.__module__.startswith("torch.nn."):
            return base
    return None


def replacement_table() -> Dict[Type[nn.Module], Type[nn.Module]]:
    """Map each torch module class to the fastopt class that replaces it."""
    from fastopt import nn as fast_nn  # the package as it is now, with every module it exports

    table: Dict[Type[nn.Module], Type[nn.Module]] = {}
    for name in fast_nn.__all__:
        cls = getattr(fast_nn, name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            continue
        base = _torch_counterpart(cls)
        # Only a direct drop-in (fastopt.nn.X subclasses torch.nn.X) replaces anything.
        if base is not None and base.__name__ == cls.__name__:
            table[base] = cls
    return table


# The containers that _swap copies; every other attribute is shared.
_CONTAINERS = ("_parameters", "_buffers", "_modules")


def _swap(module: nn.Module, cls: Type[nn.Module]) -> nn.Module:
    """A ``cls`` instance that shares ``module``'s parameters, buffers, hooks and flags.

    The constructor is not called: it would allocate fresh parameters and reset
    running statistics. The new module takes the old one's attributes. The
    parameter, buffer and submodule dictionaries are shallow copies, so the two
    modules stay independent containers of the same tensors. The hook
    dictionaries are the very same objects: a ``RemovableHandle`` taken before
    the conversion removes its hook from them by key, so it keeps working.
    Attributes that only the fastopt class has fall back to its class-level
    defaults.
    """
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for key in _CONTAINERS:
        value = module.__dict__[key]
        new.__dict__[key] = type(value)(value)
    # torch wraps load_state_dict pre-hooks with a weak reference to the module
    # they were registered on, which they pass to the hook; the old module dies
    # with the conversion ("the hook of a dead Module"), so they now refer to
    # the new one. The other hooks are handed the module when they run. (The
    # hook objects are shared, so the old module's own pre-hooks, should a
    # caller still hold it, are handed the new module too.)
    for hook in new._load_state_dict_pre_hooks.values():
        if getattr(hook, "with_module", False) and hook.module() is module:
            hook.module = weakref.ref(new)
    return new


def convert(model: nn.Module) -> nn.Module:
    """Replace every torch module that fastopt provides with its fastopt version.

    BatchNorm, GroupNorm, LayerNorm, InstanceNorm and Dropout modules (whatever
    ``fastopt.nn`` provides when this runs) are swapped in place; parameters,
    buffers, hyperparameters and train/eval mode carry over, so the model
    computes the same function. Only exact torch classes are replaced: a user's
    subclass of ``torch.nn.BatchNorm2d`` may override ``forward`` and is left
    alone, as is every other module.

    Returns the converted model; it is ``model`` itself unless ``model`` is one
    of the replaced modules, as with ``SyncBatchNorm.convert_sync_batchnorm``.
    """
    table = replacement_table()
    # id(module) -> (module, its replacement): a module used at several places
    # (weights shared by module) is converted once and stays one object. The
    # original is kept alive here so that its id cannot be reused meanwhile.
    done: Dict[int, Tuple[nn.Module, nn.Module]] = {}

    def visit(module: nn.Module) -> nn.Module:
        if id(module) in done:
            return done[id(module)][1]
        # _modules rather than named_children(), which yields a repeated child once.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            new_child = visit(child)
            if new_child is not child:
                setattr(module, name, new_child)
        cls = table.get(type(module))
        new = module if cls is None else _swap(module, cls)
        done[id(module)] = (module, new)
        return new

    with torch.no_grad():
        return visit(model)
