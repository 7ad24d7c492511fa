"""Fused Adam and AdamW."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .._ops import ops
from ._base import Bucket, FusedOptimizer, reject_differentiable


class Adam(FusedOptimizer, torch.optim.Adam):
    """Adam with a fused multi-tensor update on CPU and CUDA.

    A drop-in for :class:`torch.optim.Adam` (and an instance of it): the same
    arguments, defaults, validation errors and ``state_dict`` layout, so a
    checkpoint loads in either direction. Every step is one op call per
    (device, dtype) group of parameters, and one call also spans all param
    groups that share amsgrad/maximize/AdamW. ``foreach`` and ``fused`` are accepted
    for compatibility and do not change the result; ``differentiable=True``
    is refused. Works with AMP's GradScaler: a step skipped for inf/NaN
    gradients leaves parameters and state, step counters included, unchanged.

    Beyond torch's arguments it takes ``max_grad_norm``, ``skip_nonfinite``,
    ``master_weights`` and ``stochastic_rounding`` (keyword-only, off by
    default); see :meth:`FusedOptimizer._init_extensions` and
    docs/mixed_precision.md.
    """

    # torch's wording, which AdamW shares.
    _sparse_message = "Adam does not support sparse gradients, please consider SparseAdam instead"

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        reject_differentiable(type(self).__name__, differentiable)
        # torch's own constructor: its validation, defaults and messages.
        torch.optim.Adam.__init__(
            self,
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        self._step_supports_amp_scaling = True
        self._init_extensions(
            max_grad_norm=max_grad_norm,
            skip_nonfinite=skip_nonfinite,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
        )

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def _hparam_row(self, group: dict[str, Any]) -> list[float] | None:
        beta1, beta2 = group["betas"]
        return [float(group["lr"]), float(beta1), float(beta2), float(group["weight_decay"]), float(group["eps"])]

    def _layout_keys(self, group: dict[str, Any]) -> tuple[Any, ...]:
        return (bool(group["amsgrad"]), bool(group["maximize"]), bool(group["decoupled_weight_decay"]))

    def _update(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        update_norms: Tensor | None,
    ) -> None:
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        op = ops.adam_.tensor_lr if isinstance(lr, Tensor) else ops.adam_.default
        op(
            bucket.params,
            bucket.grads,
            bucket.state["exp_avg"],
            bucket.state["exp_avg_sq"],
            bucket.state.get("max_exp_avg_sq", []),
            bucket.steps,
            lr=lr,
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=float(group["weight_decay"]),
            eps=float(group["eps"]),
            amsgrad=bool(group["amsgrad"]),
            maximize=bool(group["maximize"]),
            decoupled_weight_decay=bool(group["decoupled_weight_decay"]),
            grad_scale=grad_scale,
            found_inf=found_inf,
            update_norms=update_norms,
            **bucket.extra_args(),
        )


class AdamW(Adam, torch.optim.AdamW):
    """AdamW (Adam with decoupled weight decay) with a fused multi-tensor update.

    A drop-in for :class:`torch.optim.AdamW`; see :class:`fastopt.optim.Adam`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            max_grad_norm=max_grad_norm,
            skip_nonfinite=skip_nonfinite,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
        )
