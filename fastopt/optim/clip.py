"""Global gradient norms and clipping without host synchronisation.

:func:`clip_grad_norm_` is a drop-in for :func:`torch.nn.utils.clip_grad_norm_`.
The norm of all gradients of a device is one ``fastopt::grad_norm`` op call
(a multi-tensor reduction), which also reports, on the device, whether any
gradient element is inf or NaN. Nothing is read back to the host unless
``error_if_nonfinite=True`` asks for it, so a training step that clips stays
asynchronous on CUDA and can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor

from .._ops import ops
from ._dtensor import is_dtensor

# torch.nn.utils.clip_grad_norm_ divides by (total_norm + 1e-6); so do we, so
# that clipping here and there scales gradients by the same factor.
CLIP_EPS = 1e-6


def _as_real(grad: Tensor, norm_type: float) -> Tensor:
    """A real tensor with ``grad``'s ``norm_type``-norm, for the fused op, which reduces real tensors."""
    if not grad.is_complex():
        return grad
    # torch's norm of a complex tensor is the norm of its elements' moduli.
    # For p = 2 that is the norm of its (re, im) pairs, a view; for other p
    # the moduli are computed, as torch computes them. (An element whose
    # finite parts give a modulus past the dtype's range then counts as
    # non-finite, like torch's norm of it.)
    return torch.view_as_real(grad) if norm_type == 2.0 else grad.abs()


def grad_norm(grads: Iterable[Tensor], norm_type: float = 2.0) -> tuple[Tensor, Tensor]:
    """The global ``norm_type``-norm of ``grads`` and a non-finite flag.

    Returns ``(total_norm, nonfinite)``: ``total_norm`` is what
    :func:`torch.nn.utils.get_total_norm` computes (float32, or float64 when a
    gradient is float64 or complex128), and ``nonfinite`` is a float32 ``1.0``
    when any element of any gradient is inf or NaN and ``0.0`` otherwise (the
    form of AMP's ``found_inf``). Both are 0-dim tensors on the first
    gradient's device. One op call per device; nothing is synchronised with
    the host. Complex gradients count by their elements' moduli, as in torch;
    for ``norm_type`` other than 2 the moduli are computed first.
    """
    norm_type = float(norm_type)
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(_as_real(g, norm_type))
    if not by_device:
        return torch.tensor(0.0), torch.tensor(0.0)
    results = [ops.grad_norm(gs, norm_type) for gs in by_device.values()]
    if norm_type == 0.0:
        # torch's "0-norm" of a gradient list counts the tensors that have a
        # nonzero element (the 0-norm of the per-tensor counts), which is not
        # a reduction over elements; take torch's value, and our flag.
        flag = results[0][1] if len(results) == 1 else torch.stack([f.to(results[0][1].device) for _, f in results]).amax()
        all_grads = [g for gs in by_device.values() for g in gs]
        dtype = torch.float64 if any(g.dtype == torch.float64 for g in all_grads) else torch.float32
        return torch.nn.utils.get_total_norm(all_grads, 0.0).to(dtype), flag
    if len(results) == 1:
        return results[0]
    first = next(iter(by_device))
    norms = torch.stack([n.to(first) for n, _ in results])
    flags = torch.stack([f.to(first) for _, f in results])
    return torch.linalg.vector_norm(norms, norm_type), flags.amax()


def clip_coefficient(total_norm: Tensor, max_norm: float) -> Tensor:
    """torch's clip factor, ``min(1, max_norm / (total_norm + 1e-6))``, as a tensor."""
    return (max_norm / (total_norm + CLIP_EPS)).clamp(max=1.0)


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    found_inf: Tensor | None = None,
) -> Tensor:
    """Clip the gradients of ``parameters`` to a global norm of at most ``max_norm``.

    A drop-in for :func:`torch.nn.utils.clip_grad_norm_`: the same arguments
    and result (the total norm before clipping, as a tensor), and the gradients
    are multiplied in place by ``min(1, max_norm / (total_norm + 1e-6))``.
    The norm is one multi-tensor reduction op per device and the scaling reads
    the factor from device memory, so nothing waits for the host.

    ``found_inf``, when given (a one-element float tensor, e.g. the flag that
    is then handed to an optimizer), is raised to 1 on the device if any
    gradient element is inf or NaN. ``foreach`` is accepted for compatibility.

    One difference, on purpose: with bfloat16 or float16 gradients the norm
    is computed in float32 or wider and returned in float32, where torch sums and
    returns it in the gradients' dtype. torch's is then off by up to a few
    tenths of a percent (bfloat16), and a float16 norm above 65504 is inf
    for torch, which then zeroes every gradient (or raises, with
    ``error_if_nonfinite``) though none is inf; here it is the finite norm.
    """
    del foreach  # the scaling always uses torch's multi-tensor path
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and not parameters:
            # torch's warning: an exhausted model.parameters() is a common slip.
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=2)
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads and is_dtensor(grads[0]):
        # Sharded gradients (FSDP2): the norm needs every shard, which torch's
        # DTensor ops reduce over the device mesh. (A model's gradients are
        # all DTensors or none; a mix fails in the op, with DTensor's error.)
        total_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite)
        if found_inf is not None:
            bad = total_norm.full_tensor() if is_dtensor(total_norm) else total_norm
            found_inf.copy_(torch.maximum(found_inf, (~bad.isfinite()).to(found_inf.device, found_inf.dtype)))
        return total_norm
    max_norm = float(max_norm)
    total_norm, nonfinite = grad_norm(grads, norm_type)
    if not grads:
        return total_norm
    if found_inf is not None:
        found_inf.copy_(torch.maximum(found_inf, nonfinite.to(found_inf.device, found_inf.dtype)))
    if error_if_nonfinite and bool(torch.logical_or(total_norm.isnan(), total_norm.isinf())):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the gradients "
            "by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    coef = clip_coefficient(total_norm, max_norm)
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    for (device, _), gs in groups.items():
        torch._foreach_mul_(gs, coef.to(device))
    return total_norm


def check_max_grad_norm(max_grad_norm: float | None) -> float | None:
    """Validate an optimizer's ``max_grad_norm``: None, or a finite number >= 0."""
    if max_grad_norm is None:
        return None
    value = float(max_grad_norm)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid max_grad_norm: {max_grad_norm}; expected a finite number >= 0")
    return value
