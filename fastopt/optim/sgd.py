"""Fused SGD with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT
from torch.optim.sgd import sgd as torch_sgd

from .._ops import ops
from ._base import Bucket, FusedOptimizer, reject_differentiable


class SGD(FusedOptimizer, torch.optim.SGD):
    """SGD with a fused multi-tensor update on CPU and CUDA.

    A drop-in for :class:`torch.optim.SGD` (and an instance of it): the same
    arguments, defaults, validation errors and ``state_dict`` layout (a
    ``momentum_buffer`` per parameter when ``momentum != 0``, no state at all
    otherwise, and no step counter), so a checkpoint loads in either
    direction. Every step is one op call per (device, dtype) group of
    parameters, across param groups. ``foreach`` and ``fused`` are accepted for compatibility and do
    not change the result; ``differentiable=True`` is refused.

    Works with AMP's GradScaler: a skipped step leaves parameters and buffers
    unchanged. A momentum buffer is created zeroed and set to the gradient by
    the first step that really happens, so skipping a parameter's very first
    step never leaves it uninitialised. One difference from torch remains in
    that corner: if AMP skips a parameter's first step, the next step treats
    the zeroed buffer as history (``buf = (1 - dampening) * grad``), where
    torch would start it at ``grad``; with ``dampening=0`` (the default) the
    two agree exactly.

    Sparse gradients (``nn.Embedding(sparse=True)``), which torch's SGD
    accepts, take torch's own single-tensor update, state included; the
    dense parameters of the same step stay fused.

    Beyond torch's arguments it takes ``max_grad_norm``, ``skip_nonfinite``,
    ``master_weights`` and ``stochastic_rounding`` (keyword-only, off by
    default); see :meth:`FusedOptimizer._init_extensions` and
    docs/mixed_precision.md.
    """

    _has_step_counter = False
    _new_state_in_op = True

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        reject_differentiable(type(self).__name__, differentiable)
        # torch's own constructor: its validation, defaults and messages.
        torch.optim.SGD.__init__(
            self,
            params,
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        self._step_supports_amp_scaling = True
        self._init_extensions(
            max_grad_norm=max_grad_norm,
            skip_nonfinite=skip_nonfinite,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
        )

    def _sparse_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        momentum = group["momentum"]
        # As torch reads them: a parameter's first sparse step starts its buffer
        # from the gradient (a sparse buffer, as in torch).
        buffers: list[Tensor | None] = [None] * len(params)
        if momentum != 0:
            buffers = [self.state[p].get("momentum_buffer") for p in params]
        torch_sgd(
            params,
            grads,
            buffers,
            has_sparse_grad=True,
            foreach=False,
            weight_decay=group["weight_decay"],
            momentum=momentum,
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )
        if momentum != 0:
            for p, buf in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buf

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _hparam_row(self, group: dict[str, Any]) -> list[float] | None:
        return [float(group["lr"]), float(group["momentum"]), float(group["dampening"]), float(group["weight_decay"])]

    def _layout_keys(self, group: dict[str, Any]) -> tuple[Any, ...]:
        # momentum == 0 means no buffers at all: a different list layout.
        return (group["momentum"] != 0, bool(group["nesterov"]), bool(group["maximize"]))

    def _update(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        update_norms: Tensor | None,
    ) -> None:
        lr = group["lr"]
        op = ops.sgd_.tensor_lr if isinstance(lr, Tensor) else ops.sgd_.default
        op(
            bucket.params,
            bucket.grads,
            bucket.state.get("momentum_buffer", []),
            lr=lr,
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            weight_decay=float(group["weight_decay"]),
            nesterov=bool(group["nesterov"]),
            maximize=bool(group["maximize"]),
            is_first_step=bucket.new_state,
            grad_scale=grad_scale,
            found_inf=found_inf,
            update_norms=update_norms,
            **bucket.extra_args(),
        )
