"""Fused Adagrad."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as torch_adagrad
from torch.optim.optimizer import ParamsT

from .._ops import ops
from ._base import Bucket, FusedOptimizer, reject_differentiable


class Adagrad(FusedOptimizer, torch.optim.Adagrad):
    """Adagrad with a fused multi-tensor update on CPU and CUDA.

    A drop-in for :class:`torch.optim.Adagrad` (and an instance of it): the
    same arguments, defaults, validation errors and ``state_dict`` layout
    (``step`` and ``sum``, created for every parameter by the constructor as
    torch does), so a checkpoint loads in either direction. Every step is one
    op call per (device, dtype) group of parameters. ``foreach`` and ``fused``
    are accepted for compatibility and do not change the result;
    ``differentiable=True`` is refused. Works with AMP's GradScaler: a step
    skipped for inf/NaN gradients leaves parameters and state, step counters
    included, unchanged. Sparse gradients, which torch's Adagrad accepts,
    take torch's own single-tensor update; the dense parameters stay fused.

    Beyond torch's arguments it takes ``max_grad_norm``, ``skip_nonfinite``,
    ``master_weights`` and ``stochastic_rounding`` (keyword-only, off by
    default); see :meth:`FusedOptimizer._init_extensions` and
    docs/mixed_precision.md.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        reject_differentiable(type(self).__name__, differentiable)
        # torch's own constructor: its validation, defaults and messages, and
        # the state of every parameter it was given.
        torch.optim.Adagrad.__init__(
            self,
            params,
            lr,
            lr_decay,
            weight_decay,
            initial_accumulator_value,
            eps,
            foreach,
            maximize=maximize,
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
        # torch's constructor filled each "sum" in its parameter's dtype, which
        # for a 16-bit parameter rounds initial_accumulator_value; a master's
        # float32 accumulator starts from the exact value instead.
        for group in self.param_groups:
            for p in group["params"]:
                if self._uses_master(p):
                    self.state[p]["sum"] = torch.full_like(
                        p, initial_accumulator_value, dtype=torch.float32, memory_format=torch.preserve_format
                    )

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    def _init_state(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        # Only for parameters added after construction (add_param_group). Like
        # torch, these start from the constructor's initial_accumulator_value,
        # not the group's.
        super()._init_state(group, param, state)
        value = self.defaults["initial_accumulator_value"]
        state["sum"].fill_(complex(value, value) if param.is_complex() else value)

    def _sparse_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = []
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                self._init_state(group, p, state)
            states.append(state)
        torch_adagrad(
            params,
            grads,
            [s["sum"] for s in states],
            [s["step"] for s in states],
            has_sparse_grad=True,
            foreach=False,
            has_complex=any(p.is_complex() for p in params),
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            lr_decay=group["lr_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )

    def _hparam_row(self, group: dict[str, Any]) -> list[float] | None:
        return [float(group["lr"]), float(group["lr_decay"]), float(group["weight_decay"]), float(group["eps"])]

    def _layout_keys(self, group: dict[str, Any]) -> tuple[Any, ...]:
        return (bool(group["maximize"]),)

    def _update(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        update_norms: Tensor | None,
    ) -> None:
        lr = group["lr"]
        op = ops.adagrad_.tensor_lr if isinstance(lr, Tensor) else ops.adagrad_.default
        op(
            bucket.params,
            bucket.grads,
            bucket.state["sum"],
            bucket.steps,
            lr=lr,
            lr_decay=float(group["lr_decay"]),
            weight_decay=float(group["weight_decay"]),
            eps=float(group["eps"]),
            maximize=bool(group["maximize"]),
            grad_scale=grad_scale,
            found_inf=found_inf,
            update_norms=update_norms,
            **bucket.extra_args(),
        )
