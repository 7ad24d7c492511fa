"""Fused RMSprop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .._ops import ops
from ._base import Bucket, FusedOptimizer, reject_differentiable


class RMSprop(FusedOptimizer, torch.optim.RMSprop):
    """RMSprop with a fused multi-tensor update on CPU and CUDA.

    A drop-in for :class:`torch.optim.RMSprop` (and an instance of it): the
    same arguments, defaults, validation errors and ``state_dict`` layout
    (``step``, ``square_avg``, plus ``momentum_buffer`` when ``momentum > 0``
    and ``grad_avg`` when ``centered``), so a checkpoint loads in either
    direction. Plain, centered and momentum variants are one op, one call per
    (device, dtype) group of parameters, computing in float32 for 16-bit
    parameters. ``foreach`` is accepted for compatibility and does not change
    the result; ``differentiable=True`` is refused. Works with AMP's
    GradScaler: a step skipped for inf/NaN gradients leaves parameters and
    state, step counters included, unchanged.

    Beyond torch's arguments it takes ``max_grad_norm``, ``skip_nonfinite``,
    ``master_weights`` and ``stochastic_rounding`` (keyword-only, off by
    default); see :meth:`FusedOptimizer._init_extensions` and
    docs/mixed_precision.md.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        reject_differentiable(type(self).__name__, differentiable)
        # torch's own constructor: its validation, defaults and messages.
        torch.optim.RMSprop.__init__(
            self,
            params,
            lr,
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
        )
        self._init_extensions(
            max_grad_norm=max_grad_norm,
            skip_nonfinite=skip_nonfinite,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
        )

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        keys = ("square_avg",)
        if group["momentum"] > 0:
            keys += ("momentum_buffer",)
        if group["centered"]:
            keys += ("grad_avg",)
        return keys

    def _hparam_row(self, group: dict[str, Any]) -> list[float] | None:
        return [float(group["lr"]), float(group["alpha"]), float(group["eps"]), float(group["weight_decay"]), float(group["momentum"])]

    def _layout_keys(self, group: dict[str, Any]) -> tuple[Any, ...]:
        return (group["momentum"] > 0, bool(group["centered"]), bool(group["maximize"]))

    def _update(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        update_norms: Tensor | None,
    ) -> None:
        lr = group["lr"]
        op = ops.rmsprop_.tensor_lr if isinstance(lr, Tensor) else ops.rmsprop_.default
        op(
            bucket.params,
            bucket.grads,
            bucket.state["square_avg"],
            bucket.state.get("grad_avg", []),
            bucket.state.get("momentum_buffer", []),
            bucket.steps,
            lr=lr,
            alpha=float(group["alpha"]),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            momentum=float(group["momentum"]),
            centered=bool(group["centered"]),
            maximize=bool(group["maximize"]),
            grad_scale=grad_scale,
            found_inf=found_inf,
            update_norms=update_norms,
            **bucket.extra_args(),
        )
