"""Fake kernels of the multi-tensor optimizer ops."""

from __future__ import annotations

from typing import Any

import torch

# Ops that only write their inputs in place and return nothing, like ATen's
# _fused_adam_: their outputs are their (already allocated) arguments.
IN_PLACE_OPS = (
    "fastopt::adam_",
    "fastopt::adam_.tensor_lr",
    "fastopt::rmsprop_",
    "fastopt::rmsprop_.tensor_lr",
    "fastopt::ema_",
    "fastopt::ema_.tensor_decay",
    "fastopt::sgd_",
    "fastopt::sgd_.tensor_lr",
    "fastopt::adagrad_",
    "fastopt::adagrad_.tensor_lr",
)


def _in_place_fake(*args: Any, **kwargs: Any) -> None:
    return None


for _name in IN_PLACE_OPS:
    torch.library.register_fake(_name)(_in_place_fake)


@torch.library.register_fake("fastopt::grad_norm")
def _grad_norm_fake(grads: list[torch.Tensor], norm_type: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    device = grads[0].device if grads else torch.device("cpu")
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    return (
        torch.empty((), dtype=dtype, device=device),
        torch.empty((), dtype=torch.float32, device=device),
    )
