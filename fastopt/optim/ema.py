"""Fused exponential moving average of model weights (Polyak averaging)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Union

import torch
from torch import Tensor

from .._ops import ops

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


def _averaged(t: Tensor) -> bool:
    # Integer buffers such as BatchNorm's num_batches_tracked are counters,
    # not weights: they are copied, never averaged. Complex tensors are
    # weights like real ones.
    return t.is_floating_point() or t.is_complex()


class _Groups:
    """``shadow``/``current`` pairs split into averaged (device, dtype) groups and the rest.

    Built once per EMA (its tensors never change) and per call for
    AveragedModel's multi_avg_fn, whose lists may.
    """

    def __init__(self, shadow: list[Tensor], current: list[Tensor]) -> None:
        self.averaged: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        self.other: list[tuple[Tensor, Tensor]] = []
        for s, c in zip(shadow, current, strict=True):
            if _averaged(s):
                dst, src = self.averaged.setdefault((s.device, s.dtype), ([], []))
                dst.append(s)
                src.append(c.detach())
            else:
                self.other.append((s, c))

    @torch.no_grad()
    def update(self, decay: float, *, like_torch: bool = False) -> None:
        """shadow = lerp(shadow, current, 1 - decay): one op per (device, dtype).

        Integer tensors are copied, or with ``like_torch`` treated as
        torch.optim.swa_utils.get_ema_multi_avg_fn treats them: ``decay * shadow +
        (1 - decay) * current``, truncated back to the integer dtype.
        """
        for s, c in self.other:
            s.copy_(s * decay + c * (1 - decay) if like_torch else c)
        for (_, dtype), (dst, src) in self.averaged.items():
            if dtype.is_complex:
                # The fused op averages real floating-point tensors only; complex
                # ones take torch's own lerp, which is exactly what
                # get_ema_multi_avg_fn computes for them.
                torch._foreach_lerp_(dst, src, 1 - decay)
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
        self._tracked = _tensors(parameters)
        with torch.no_grad():
            # clone keeps each tensor's strides (channels_last stays channels_last).
            self.shadow: list[Tensor] = [t.detach().clone() for t in self._tracked]
        # Grouped once: per-call regrouping cost more than the op on a ResNet.
        self._groups = _Groups(self.shadow, self._tracked)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    def update(self) -> None:
        """Move the average towards the tracked tensors' current values."""
        self._groups.update(self.current_decay())
        self.num_updates += 1

    def _targets(self, parameters: Tensors | None) -> list[Tensor]:
        targets = self._tracked if parameters is None else _tensors(parameters)
        if len(targets) != len(self.shadow):
            raise ValueError(
                f"EMA holds {len(self.shadow)} tensors but {len(targets)} were given; pass the "
                "module or tensors the EMA was created from (parameters, then buffers)"
            )
        return targets

    @torch.no_grad()
    def copy_to(self, parameters: Tensors | None = None) -> None:
        """Copy the averaged values into ``parameters`` (default: the tracked tensors).

        ``parameters`` is a module or tensors in the order the EMA was built
        from, for example a second copy of the model kept for evaluation.
        """
        for target, s in zip(self._targets(parameters), self.shadow):
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
