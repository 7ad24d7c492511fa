"""Machinery shared by every fastopt optimizer.

A fastopt optimizer keeps torch's state layout (same keys, dtypes and
devices) and replaces the update with one fused op call per (device, dtype)
bucket of a param group. Subclasses say which state they keep and which op
they call; this class finds the parameters with gradients, initialises state
lazily, buckets the tensors and hands AMP's grad_scale / found_inf to the op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Bucket:
    """The tensors of one param group that share a device and dtype."""

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] = field(default_factory=list)
    state: dict[str, list[Tensor]] = field(default_factory=dict)


def _as_real(t: Tensor) -> Tensor:
    # torch.optim updates complex parameters as pairs of reals; so do we.
    return torch.view_as_real(t) if t.is_complex() else t


def new_step_counter(param: Tensor) -> Tensor:
    """A zero step counter where torch's fused optimizers keep it.

    CPU params keep it on the CPU in torch's default scalar dtype; CUDA params
    keep it on their device as float32, so the update never waits on the host
    and can be captured in a CUDA graph.
    """
    if param.device.type == "cpu":
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        return torch.tensor(0.0, dtype=dtype)
    return torch.zeros((), dtype=torch.float32, device=param.device)


class FusedOptimizer(torch.optim.Optimizer):
    """Base class of the fastopt optimizers: one fused op call per bucket."""

    # AMP's GradScaler hands this optimizer grad_scale/found_inf instead of
    # unscaling the gradients itself (see torch.amp.GradScaler.step).
    _step_supports_amp_scaling = True

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Names of the per-parameter state tensors the op updates, in op order."""
        raise NotImplementedError

    def _init_state(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """Create the state of ``param`` on its first step."""
        raise NotImplementedError

    def _update(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> None:
        """Apply one step to a bucket with a single op call."""
        raise NotImplementedError

    def _buckets(self, group: dict[str, Any]) -> dict[tuple[torch.device, torch.dtype], Bucket]:
        keys = self._state_keys(group)
        buckets: dict[tuple[torch.device, torch.dtype], Bucket] = {}
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients"
                )
            state = self.state[p]
            if len(state) == 0:
                self._init_state(group, p, state)
            step = state["step"]
            if step.device != p.device:
                # A torch checkpoint keeps CUDA step counters on the CPU;
                # fastopt's CUDA update reads them on the device.
                step = state["step"] = step.to(device=p.device, dtype=torch.float32)
            real = _as_real(p)
            bucket = buckets.get((p.device, real.dtype))
            if bucket is None:
                bucket = buckets[(p.device, real.dtype)] = Bucket(state={k: [] for k in keys})
            bucket.params.append(real)
            bucket.grads.append(_as_real(grad))
            bucket.steps.append(step)
            for k in keys:
                bucket.state[k].append(_as_real(state[k]))
        return buckets

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure: a closure that re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        on_device: dict[tuple[int, torch.device], Tensor] = {}

        def to_device(t: Tensor | None, device: torch.device) -> Tensor | None:
            # One copy per (tensor, device) per step, shared by all buckets.
            if t is None or t.device == device:
                return t
            key = (id(t), device)
            if key not in on_device:
                on_device[key] = t.to(device, non_blocking=True)
            return on_device[key]

        for group in self.param_groups:
            for (device, _), bucket in self._buckets(group).items():
                self._update(group, bucket, to_device(grad_scale, device), to_device(found_inf, device))
        return loss
