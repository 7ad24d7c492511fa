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

    sources: list[Tensor] = field(default_factory=list)  # the parameters themselves
    params: list[Tensor] = field(default_factory=list)  # as the op sees them (complex as real)
    grads: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] = field(default_factory=list)  # empty without step counters
    state: dict[str, list[Tensor]] = field(default_factory=dict)
    # Whether these tensors' state was created by this step; only set for
    # optimizers whose op initialises new state itself (see _new_state_in_op).
    new_state: bool = False


def _identity(t: Tensor) -> Tensor:
    return t


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


def reject_differentiable(name: str, differentiable: bool) -> None:
    """Refuse ``differentiable=True``: a fused update is not recorded by autograd."""
    if differentiable:
        raise RuntimeError(
            f"fastopt.optim.{name} does not support differentiable=True: its fused update is "
            f"not recorded by autograd. Use torch.optim.{name}(differentiable=True) instead."
        )


class FusedOptimizer(torch.optim.Optimizer):
    """Base class of the fastopt optimizers: one fused op call per bucket."""

    # AMP's GradScaler hands this optimizer grad_scale/found_inf instead of
    # unscaling the gradients itself (see torch.amp.GradScaler.step).
    _step_supports_amp_scaling = True
    # Whether the optimizer keeps torch's per-parameter state["step"] counter
    # (Adam, Adagrad) or none at all (SGD).
    _has_step_counter = True
    # Whether the op must be told that state was just created, because its
    # first update differs from later ones (SGD's momentum buffer starts as the
    # gradient). Such tensors then get an op call of their own: see Bucket.new_state.
    _new_state_in_op = False

    def track_update_ratios(self, enabled: bool = True) -> None:
        """Compute ||update|| / ||param|| per parameter inside each fused step.

        A training run is healthy when this ratio sits around 1e-3. The sums
        are accumulated from values the update already holds in registers, so
        tracking costs no extra pass over memory; off (the default), the
        accumulation is compiled out of the kernels. Read the ratios of the
        last step with :meth:`update_ratios`.
        """
        self._track_ratios = enabled
        self._last_norms: list[tuple[list[Tensor], Tensor]] = []

    def update_ratios(self) -> dict[Tensor, Tensor]:
        """||p_after - p_before|| / ||p_before|| of each parameter updated by the last step.

        Returns a dict from parameter to a 0-dim float64 tensor on the
        parameter's device (no host synchronisation happens here). Requires
        :meth:`track_update_ratios`. A parameter that was zero before the step
        has an infinite (or NaN, if unchanged) ratio; a step skipped by AMP
        reports the ratios of zero updates.
        """
        if not getattr(self, "_track_ratios", False):
            raise RuntimeError(
                f"{type(self).__name__}.update_ratios() needs track_update_ratios() before the step"
            )
        ratios: dict[Tensor, Tensor] = {}
        for params, norms in self._last_norms:
            values = norms[:, 0].sqrt() / norms[:, 1].sqrt()
            ratios.update(zip(params, values.unbind()))
        return ratios

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Names of the per-parameter state tensors the op updates, in op order."""
        raise NotImplementedError

    def _init_state(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """Create the state of ``param`` on its first step.

        By default, as torch's optimizers do: a zero step counter (for
        optimizers that keep one) and one zero tensor in ``param``'s layout
        per key of :meth:`_state_keys`. Zeros even where the op overwrites new
        state (SGD's momentum buffer), so that a first step skipped by AMP
        leaves no garbage behind.
        """
        if self._has_step_counter:
            state["step"] = new_step_counter(param)
        for key in self._state_keys(group):
            state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _update(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        update_norms: Tensor | None,
    ) -> None:
        """Apply one step to a bucket with a single op call.

        ``update_norms``, when given, is the op's float64 [len(bucket.params), 2] output.
        """
        raise NotImplementedError

    def _buckets(self, group: dict[str, Any]) -> dict[tuple[Any, ...], Bucket]:
        keys = self._state_keys(group)
        # torch never touches self.state for a parameter without state (SGD
        # without momentum), so its state_dict stays empty; so does ours.
        has_state = bool(keys) or self._has_step_counter
        buckets: dict[tuple[Any, ...], Bucket] = {}
        has_step = self._has_step_counter
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients"
                )
            state = self.state[p] if has_state else {}
            new_state = has_state and len(state) == 0
            if new_state:
                self._init_state(group, p, state)
            # This loop runs for every parameter on every step, so it asks
            # is_complex once rather than per tensor (see _as_real).
            as_real = torch.view_as_real if p.is_complex() else _identity
            real = as_real(p)
            key = (p.device, real.dtype, new_state and self._new_state_in_op)
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = Bucket(state={k: [] for k in keys}, new_state=key[2])
            bucket.sources.append(p)
            bucket.params.append(real)
            bucket.grads.append(as_real(grad))
            if has_step:
                step = state["step"]
                if step.is_cpu != p.is_cpu:
                    # A torch checkpoint keeps CUDA step counters on the CPU;
                    # fastopt's CUDA update reads them on the device.
                    step = state["step"] = step.to(device=p.device, dtype=torch.float32)
                bucket.steps.append(step)
            for k in keys:
                bucket.state[k].append(as_real(state[k]))
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

        track = getattr(self, "_track_ratios", False)
        if track:
            self._last_norms = []
        for group in self.param_groups:
            for (device, *_), bucket in self._buckets(group).items():
                norms = None
                if track:
                    norms = torch.empty(len(bucket.params), 2, dtype=torch.float64, device=device)
                    self._last_norms.append((bucket.sources, norms))
                self._update(
                    group, bucket, to_device(grad_scale, device), to_device(found_inf, device), norms
                )
        return loss
