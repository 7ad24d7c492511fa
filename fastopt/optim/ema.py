"""Fused exponential moving average of model weights (Polyak averaging)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Union

import torch
from torch import Tensor

from .._ops import ops
from ._dtensor import is_dtensor, local

Tensors = Union[torch.nn.Module, Iterable[Tensor]]


def _check_decay(decay: float) -> None:
    # torch.optim.swa_utils.get_ema_multi_avg_fn's check and message.
    if decay < 0.0 or decay > 1.0:
        raise ValueError(f"Invalid decay value {decay} provided. Please provide a value in [0,1] range.")


def _tensors(source: Tensors) -> list[Tensor]:
    """A module's parameters then its buffers, or the given tensors, in order."""
    if isinstance(source, torch.nn.Module):
        return [*source.parameters(), *source.buffers()]
    return list(source)


class _Tracked:
    """The tensors an EMA tracks, as they are now: the same list while they are the same objects.

    Tensors given as such are those objects (their ``.data`` may change). A
    module's are its ``parameters()`` then ``buffers()``, read again when a
    module of its tree holds other submodules, parameters or buffers than at
    the last read (``load_state_dict(..., assign=True)``, ``model.fc = ...``).
    Looking at those dicts costs a small part of reading the tensors through
    ``parameters()`` and ``buffers()``, which AveragedModel does every update.
    """

    def __init__(self, source: Tensors) -> None:
        self.module = source if isinstance(source, torch.nn.Module) else None
        self.tensors: list[Tensor] = [] if self.module is not None else list(source)
        self.modules: list[torch.nn.Module] = []
        self.contents: list[int] = []
        if self.module is not None:
            self._read()

    def _read(self) -> None:
        self.modules = list(self.module.modules())
        self.tensors = _tensors(self.module)
        self.contents = self._contents()

    def _contents(self) -> list[int]:
        # ids of what each module holds; self.modules and self.tensors keep
        # those objects alive, so an equal id is the same object.
        return [
            id(v) for m in self.modules for d in (m._modules, m._parameters, m._buffers) for v in d.values()
        ]

    def current(self) -> list[Tensor]:
        """The tracked tensors, in the order of the EMA's shadow."""
        if self.module is not None and torch.compiler.is_compiling():
            # Traced, the module's tensors are read as they are: the graph's
            # guards, not the ids of _contents (which dynamo cannot trace),
            # notice replaced ones.
            return _tensors(self.module)
        if self.module is not None and self._contents() != self.contents:
            self._read()
        return self.tensors


def _warmup_decay(n: int | Tensor) -> float | Tensor:
    # The warmup's bound on the decay at the n-th update (n from 0); the
    # same float64 arithmetic for an int and a float64 tensor.
    return (1 + n) / (10 + n)


def _averaged(t: Tensor) -> bool:
    # Integer buffers such as BatchNorm's num_batches_tracked are counters,
    # not weights: they are copied, never averaged. Complex tensors are
    # weights like real ones.
    return t.is_floating_point() or t.is_complex()


def _check_shape(index: int, average: Tensor, tensor: Tensor) -> None:
    # A value of another shape is no longer the weight that was averaged:
    # neither averaging it nor copying the average into it has a meaning.
    if tensor.shape != average.shape:
        raise ValueError(
            f"EMA: tracked tensor {index} has shape {tuple(tensor.shape)} but its average has shape "
            f"{tuple(average.shape)}; an EMA cannot follow a tensor whose shape changed"
        )


class _Groups:
    """``shadow``/``current`` pairs split into averaged (device, dtype) groups and the rest.

    Holds detached aliases of the ``current`` tensors: passed to the op as
    they are, Parameters that require grad would take the autograd fallback's
    per-tensor checks (about 1 us each, a tenth of a ResNet-50 update). An
    alias sees the tensor's storage at grouping time, so :class:`EMA` rebuilds
    the grouping when a tensor gets new storage (``p.data = ...``). Built per
    call for AveragedModel's multi_avg_fn, whose lists may change.
    """

    def __init__(self, shadow: list[Tensor], current: list[Tensor]) -> None:
        self.averaged: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        # The groups with a current value on another device or in another dtype
        # than its average (after model.half() or model.to(device)).
        self.converted: set[tuple[torch.device, torch.dtype]] = set()
        self.other: list[tuple[Tensor, Tensor]] = []
        for i, (s, c) in enumerate(zip(shadow, current, strict=True)):
            _check_shape(i, s, c)
            if _averaged(s):
                key = (s.device, s.dtype)
                dst, src = self.averaged.setdefault(key, ([], []))
                # DTensors (FSDP2): the shards, averaged elementwise here (_dtensor.py).
                dst.append(local(s))
                src.append(local(c.detach()))
                if (c.device, c.dtype) != key:
                    self.converted.add(key)
            else:
                self.other.append((s, c))

    def update(self, decay: float | Tensor, *, like_torch: bool = False) -> None:
        """shadow = lerp(shadow, current, 1 - decay): one op per (device, dtype).

        ``decay`` is a float, or a one-element float64 CPU tensor (a traced
        update with warmup, see :meth:`EMA.update`).

        Integer tensors are copied, or with ``like_torch`` treated as
        torch.optim.swa_utils.get_ema_multi_avg_fn treats them: ``decay * shadow +
        (1 - decay) * current``, truncated back to the integer dtype. A current
        value on another device or in another dtype than its average is read
        converted to the average's, as AveragedModel reads it.
        """
        # A with block, not the @torch.no_grad() decorator: torch.compile
        # cannot inline the decorator's wrapper of a method of an object made
        # inside the traced call (an EMA update under torch.compile).
        with torch.no_grad():
            for s, c in self.other:
                s.copy_(s * decay + c * (1 - decay) if like_torch else c)
            for (device, dtype), (dst, src) in self.averaged.items():
                if (device, dtype) in self.converted:
                    # A temporary per update, in these groups only; Tensor.to
                    # returns the tensors that already match as they are.
                    src = [c.to(device, dtype) for c in src]
                if dtype.is_complex:
                    # The fused op averages real floating-point tensors only; complex
                    # ones take torch's own lerp, which is exactly what
                    # get_ema_multi_avg_fn computes for them.
                    if isinstance(decay, Tensor):  # (_foreach_lerp_ takes no tensor weight)
                        weight = (1 - decay).to(dst[0].real.dtype)  # (dtype.to_real() stops dynamo)
                        for s, c in zip(dst, src):
                            s.lerp_(c, weight)
                    else:
                        torch._foreach_lerp_(dst, src, 1 - decay)
                elif isinstance(decay, Tensor):
                    ops.ema_.tensor_decay(dst, src, decay=decay)
                else:
                    ops.ema_(dst, src, decay=decay)


class EMA:
    """An exponential moving average of a model's weights, updated by one fused op.

    Keeps a *shadow* copy of every parameter and buffer and, on each
    :meth:`update`, moves it towards the model's current values::

        shadow = shadow + (1 - decay) * (param - shadow)

    which is ``torch.lerp(shadow, param, 1 - decay)``, rounded as
    ``torch._foreach_lerp_(shadow, params, 1 - decay)`` rounds it (in float32
    for 16-bit tensors). The whole update is one op call per (device, dtype),
    not one kernel per tensor (complex tensors, which the fused op does not
    take, are averaged by ``torch._foreach_lerp_``). Floating-point and
    complex buffers (BatchNorm's running statistics) are averaged too; integer
    buffers (``num_batches_tracked``) are copied, as they count rather than weigh.

    Typical use::

        ema = fastopt.optim.EMA(model, decay=0.999)
        for batch in loader:
            ...
            optimizer.step()
            ema.update()
        with ema.average_parameters():
            evaluate(model)        # runs with the averaged weights
        # the trained weights are back here

    :meth:`update` also runs under ``torch.compile(ema.update, fullgraph=True)``
    (or inside a compiled training step), as one call of the fused op, with
    or without warmup: one recompile when the update count first changes,
    after which dynamo treats the count as dynamic and later updates reuse
    the graph.

    Like :class:`torch.optim.swa_utils.AveragedModel`, the EMA acts on the
    model's tensors as they are at each :meth:`update`, :meth:`copy_to` and
    :meth:`average_parameters`: on a module's current ``parameters()`` and
    ``buffers()`` (Parameters replaced by ``load_state_dict(..., assign=True)``
    are followed), and on a tensor whose ``.data`` was replaced
    (``model.to(memory_format=...)``, ``p.data = ...``) where its values now
    are. The shadow, like AveragedModel's own copy of the model, keeps the
    devices and dtypes it was created with: after ``model.half()`` or
    ``model.to(device)`` the average stays in its dtype and on its device,
    each update reads the current values converted to them (a temporary per
    update for those tensors), and :meth:`copy_to` converts the average to the
    parameters' new dtype and device. To keep the average on a new device,
    create an EMA for the moved model and load the old one's
    :meth:`state_dict` into it. A tracked tensor whose shape changed, or a
    module whose number of parameters and buffers changed, raises ValueError.

    Args:
        parameters: a :class:`torch.nn.Module` (its ``parameters()`` then its
            ``buffers()``) or an iterable of tensors. The shadow starts as a
            copy of them, on their devices and in their dtypes and layouts.
        decay: weight of the old average, in [0, 1]. 0.999 averages over
            roughly the last 1000 updates.
        warmup: if true, use ``min(decay, (1 + n) / (10 + n))`` at the n-th
            update (n from 0), so that the average forgets its random initial
            weights quickly early in training.
    """

    def __init__(self, parameters: Tensors, decay: float = 0.999, *, warmup: bool = False) -> None:
        _check_decay(decay)
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self._tracked = _Tracked(parameters)
        with torch.no_grad():
            # clone keeps each tensor's strides (channels_last stays channels_last).
            self.shadow: list[Tensor] = [t.detach().clone() for t in self._tracked.current()]
        # DTensor parameters (FSDP2), whose storage is their local shard's.
        self._sharded = any(is_dtensor(t) for t in self.shadow)
        # The grouping, and the tracked list and data pointers it was built from.
        self._grouping: tuple[list[Tensor], list[int], _Groups] | None = None

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, _warmup_decay(self.num_updates))

    def update(self) -> None:
        """Move the average towards the tracked tensors' current values."""
        decay: float | Tensor
        if self.warmup and torch.compiler.is_compiling():
            # Traced, the warmup decay is computed from the update count as a
            # tensor (the same float64 arithmetic, so the same value): as a
            # float it would be a constant of the graph and each update would
            # compile anew, while the count itself becomes a dynamic integer
            # after its first change.
            n = torch.tensor(self.num_updates, dtype=torch.float64)
            decay = torch.clamp(_warmup_decay(n), max=self.decay)
        else:
            decay = self.current_decay()
        self._current_groups().update(decay)
        self.num_updates += 1

    def _current_groups(self) -> _Groups:
        """The fused grouping of the shadow with the current tensors.

        Regrouping every update cost more than the op on a ResNet, so the
        grouping is rebuilt only when a tracked tensor was replaced
        (``load_state_dict(..., assign=True)``: :class:`_Tracked` gives a new
        list) or got new storage (``.half()``, ``.to(device)``,
        ``.to(memory_format=...)``, ``p.data = ...``: a new data pointer). The
        fused op checks that dtypes and shapes still match the shadow's (they
        could change without a new data pointer only by
        ``p.data = p.data.view(...)``).
        """
        current = self._targets(None)
        if torch.compiler.is_compiling():
            # Nor can data pointers be traced: a traced update groups afresh.
            return _Groups(self.shadow, current)
        if getattr(self, "_sharded", False):  # (absent from an EMA pickled before it existed)
            with torch.no_grad():  # to_local outside autograd: 0.1 us, not 6
                pointers = [local(t).data_ptr() for t in current]
        else:
            pointers = [t.data_ptr() for t in current]
        cache = self._grouping
        if cache is None or cache[0] is not current or cache[1] != pointers:
            cache = self._grouping = (current, pointers, _Groups(self.shadow, current))
        return cache[2]

    def _targets(self, parameters: Tensors | None) -> list[Tensor]:
        """``parameters``' tensors, or the tracked ones as they are now."""
        targets = self._tracked.current() if parameters is None else _tensors(parameters)
        if len(targets) != len(self.shadow):
            if parameters is None:  # only a module's tensors can come and go
                raise ValueError(
                    f"EMA holds {len(self.shadow)} tensors but the module it tracks now has "
                    f"{len(targets)} parameters and buffers; an EMA cannot follow tensors that "
                    "were added or removed"
                )
            raise ValueError(
                f"EMA holds {len(self.shadow)} tensors but {len(targets)} were given; pass the "
                "module or tensors the EMA was created from (parameters, then buffers)"
            )
        return targets

    @torch.no_grad()
    def copy_to(self, parameters: Tensors | None = None) -> None:
        """Copy the averaged values into ``parameters`` (default: the tracked tensors).

        ``parameters`` is a module or tensors in the order the EMA was built
        from, for example a second copy of the model kept for evaluation. The
        averages are converted to each target's dtype and device.
        """
        for i, (target, s) in enumerate(zip(self._targets(parameters), self.shadow)):
            _check_shape(i, s, target)
            target.copy_(s)

    @contextmanager
    def average_parameters(self, parameters: Tensors | None = None) -> Iterator[None]:
        """Swap the averaged values in for the block, and restore the originals after.

        Inside the ``with`` block the tracked tensors (or ``parameters``) hold
        the averages; on exit, even by an exception, they get back exactly the
        values they had before. Meant for evaluation: anything the block
        writes to them (an optimizer step, BatchNorm in train mode updating
        its running statistics) is discarded.
        """
        targets = self._targets(parameters)
        with torch.no_grad():
            saved = [t.detach().clone() for t in targets]
            self.copy_to(targets)
        try:
            yield
        finally:
            with torch.no_grad():
                for t, v in zip(targets, saved):
                    t.copy_(v)

    def state_dict(self) -> dict[str, Any]:
        """The averaged tensors and the settings, for ``torch.save``."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": list(self.shadow),
        }

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values into this EMA's shadow tensors.

        The values are copied into the existing shadow, so they keep this
        EMA's devices and dtypes whatever device the checkpoint was saved on.
        """
        shadow = state_dict["shadow"]
        if len(shadow) != len(self.shadow):
            raise ValueError(
                f"the state_dict holds {len(shadow)} tensors but this EMA tracks {len(self.shadow)}"
            )
        for i, (mine, saved) in enumerate(zip(self.shadow, shadow)):
            if mine.shape != saved.shape:
                raise ValueError(
                    f"shadow tensor {i} has shape {tuple(saved.shape)} in the state_dict but "
                    f"{tuple(mine.shape)} here"
                )
        _check_decay(state_dict["decay"])
        for mine, saved in zip(self.shadow, shadow):
            mine.copy_(saved)
        self.decay = float(state_dict["decay"])
        self.warmup = bool(state_dict.get("warmup", False))
        self.num_updates = int(state_dict["num_updates"])


def ema_multi_avg_fn(decay: float = 0.999) -> Callable[[list[Tensor], list[Tensor], Any], None]:
    """A fused ``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`.

    A drop-in for ``torch.optim.swa_utils.get_ema_multi_avg_fn(decay)``: the
    same validation and result (``torch._foreach_lerp_(averaged, current,
    1 - decay)``), from one fused op::

        ema_model = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.999))

    Integer tensors (``num_batches_tracked`` with ``use_buffers=True``)
    get torch's treatment too, so that the two functions agree everywhere.
    AveragedModel calls the function once per (device, dtype) group with
    ``(averaged_param_list, current_param_list, num_averaged)``.
    """
    _check_decay(decay)

    def ema_update(averaged: list[Tensor], current: list[Tensor], num_averaged: Any) -> None:
        _Groups(averaged, current).update(decay, like_torch=True)

    return ema_update
