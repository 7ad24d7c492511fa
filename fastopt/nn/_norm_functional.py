"""Functional forms of fastopt's modules.

GroupNorm, LayerNorm and InstanceNorm all run on ``torch.ops.fastopt.group_norm_fwd``
(autograd in ``csrc/autograd/``, fake kernels in ``fastopt/_ops/norm.py``):

* GroupNorm: x of shape (N, C, *) in G groups of C / G channels;
* LayerNorm: x as rows of its K trailing elements (the op's
  ``normalized_ndim``), one group of K "channels" per row, so that each
  element has its own weight;
* InstanceNorm: GroupNorm with one channel per group.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ._batch_norm_functional import (
    check_param_dtypes,
    check_per_channel,
    check_stats_not_differentiable,
    check_stats_pair,
)
from ._torch_function import check_tensor_input, dispatches_torch_function, warn_shape_constant

# Codes of the op's `activation` argument.
_ACTIVATIONS = {None: 0, "relu": 1, "silu": 2}
_TORCH_ACTIVATIONS = {None: lambda t: t, "relu": torch.relu, "silu": torch.nn.functional.silu}


def _has_kernels(dispatch_key: str) -> bool:
    """Whether this build registered the group-norm kernels for ``dispatch_key``.

    Looked up once, at import: the answer is fixed by the build, and a Python
    bool is something torch.compile traces without a graph break.
    """
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastopt::group_norm_fwd", dispatch_key)


_CPU_KERNELS = _has_kernels("CPU")
_CUDA_KERNELS = _has_kernels("CUDA")


def has_kernel(input: Tensor) -> bool:
    """Whether fastopt's fused kernels serve ``input``'s device.

    CPU always, CUDA when the extension was built with it. On any other
    device (meta, mps, or CUDA under a CPU-only build) the modules and
    functions run torch's implementation instead, so that a model (or one
    converted by :func:`fastopt.nn.convert`) keeps working when moved there.
    (The flags, not ``input.device.type``: building the device object cost
    0.3 us a call, 2% of a LayerNorm module's forward at (8, 64).)
    """
    return (_CPU_KERNELS and input.is_cpu) or (_CUDA_KERNELS and input.is_cuda)


def check_activation(activation: Optional[str]) -> Optional[str]:
    """Return ``activation`` if fastopt can fuse it (None, "relu", "silu"), else raise ValueError."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu' or 'silu', got {activation!r}")
    return activation


def _check_group_norm_args(input: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor]) -> None:
    """torch.nn.functional.group_norm's checks, in its order, with its exception types and messages.

    The op checks its arguments too, in fastopt's words; these run first so
    that a caller sees exactly what torch raises.
    """
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    # torch's ValueError for a group of one value (N = 1, C / G = 1, no spatial extent).
    torch.nn.functional._verify_batch_size(
        [input.size(0) * input.size(1) // num_groups, num_groups] + list(input.size()[2:])
    )
    if num_groups <= 0:  # ATen's check, before the divisibility one (0 already failed above, as in torch)
        raise RuntimeError(f"Expected num groups to be greater than 0, got {num_groups}")
    channels = input.size(1)
    if channels % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got input of shape "
            f"{list(input.shape)} and num_groups={num_groups}"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and (param.dim() != 1 or param.numel() != channels):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in input, but got "
                f"{name} of shape {list(param.shape)} and input of shape {list(input.shape)}"
            )
    check_param_dtypes(input, weight, bias)


def _torch_group_norm(
    input: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: Optional[str] = None,
) -> Tensor:
    """:func:`group_norm` from torch's functionals (and its unfused activation)."""
    activate = _TORCH_ACTIVATIONS[check_activation(activation)]
    return activate(torch.nn.functional.group_norm(input, num_groups, weight, bias, eps))


@dispatches_torch_function(twin=_torch_group_norm)
def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: Optional[str] = None,
) -> Tensor:
    """``torch.nn.functional.group_norm``, optionally followed by a fused activation.

    ``activation`` is None, ``"relu"`` or ``"silu"``; it is applied in the same
    pass as the normalization, and its backward is fused into the norm's.
    Contiguous and channels-last inputs run natively; the output keeps the
    input's memory format.
    """
    code = _ACTIVATIONS[check_activation(activation)]
    _check_group_norm_args(input, num_groups, weight, bias)
    if not has_kernel(input):
        return _torch_group_norm(input, num_groups, weight, bias, eps, activation)
    return torch.ops.fastopt.group_norm_fwd(input, weight, bias, num_groups, eps, code)[0]


def _normalized_shape(normalized_shape: Sequence[int]) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple, refused as torch's argument parser refuses it.

    torch.layer_norm takes a list or tuple (torch.Size is one), not a bare int:
    only the LayerNorm module turns an int into a 1-tuple, in its constructor.
    """
    if not isinstance(normalized_shape, (tuple, list)):
        raise TypeError(
            "layer_norm(): argument 'normalized_shape' (position 2) must be tuple of ints, "
            f"not {type(normalized_shape).__name__}"
        )
    return tuple(normalized_shape)


def _check_layer_norm_args(
    input: Tensor, shape: tuple[int, ...], weight: Optional[Tensor], bias: Optional[Tensor]
) -> None:
    """torch's checks of layer_norm's arguments, in its order, with its exception types and messages."""
    if len(shape) == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, "
            f"but got normalized_shape = {list(shape)}"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and param.shape != shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                f"{list(param.shape)} and normalized_shape = {list(shape)}"
            )
    k = len(shape)
    if input.dim() < k or tuple(input.shape[input.dim() - k :]) != shape:
        # Sic: torch prints no space between "size" and the shape.
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape [*, "
            f"{', '.join(str(s) for s in shape)}], but got input of size{list(input.shape)}"
        )
    check_param_dtypes(input, weight, bias)


@dispatches_torch_function(twin=torch.nn.functional.layer_norm)
def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.layer_norm`` on fastopt's group-norm kernels."""
    check_tensor_input("layer_norm", input)
    shape = _normalized_shape(normalized_shape)
    _check_layer_norm_args(input, shape, weight, bias)
    if not has_kernel(input):
        return torch.nn.functional.layer_norm(input, shape, weight, bias, eps)
    # The op takes input as it is, rows being its leading dims (normalized_ndim).
    return torch.ops.fastopt.group_norm_fwd(input, weight, bias, 1, eps, 0, len(shape))[0]


def _instance_norm(
    input: Tensor,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Instance normalization with each sample's statistics: ``(y, mean, rstd)``, the statistics (N, C)."""
    return torch.ops.fastopt.group_norm_fwd(input, weight, bias, input.size(1), eps, 0)


def _check_instance_norm_args(input: Tensor, tensors: dict[str, Optional[Tensor]]) -> None:
    """torch's per-channel size checks of instance_norm's arguments, with its messages.

    torch runs BatchNorm on the input viewed as (1, N * C, *) with every
    per-channel tensor repeated N times, and its messages count the repeats
    (so with N = 0, nothing is checked here; the op still checks weight and bias).
    """
    check_stats_pair(tensors["running_mean"], tensors["running_var"])
    for name, t in tensors.items():
        check_per_channel(t, name, input.size(1), repeats=input.size(0))
    # torch 2.13's instance_norm leaves running estimates out of its dtype
    # check unless running_mean has the parameters' dtype (weight's, else
    # bias's, else the input's); then both are checked, first, as in
    # batch_norm's training, so a running_var of another dtype is refused.
    # Given running estimates and a bias without a weight, it refuses a
    # float32 bias for a 16-bit input too. (Found by trying every dtype
    # combination; tests/nn/test_drop_in_edges.py compares them all.)
    weight, bias = tensors["weight"], tensors["bias"]
    mean, var = tensors["running_mean"], tensors["running_var"]
    bias_alone = weight is None and bias is not None and mean is not None
    param_dtype = weight.dtype if weight is not None else bias.dtype if bias is not None else input.dtype
    stats = (mean, var) if mean is not None and mean.dtype == param_dtype else ()
    check_param_dtypes(input, weight, bias, *stats, checked_first=stats, allow_mixed=not bias_alone)


@torch.no_grad()
def _update_running_stats(
    input: Tensor, mean: Tensor, rstd: Tensor, running_mean: Tensor, running_var: Tensor, momentum: float, eps: float
) -> None:
    """Fold the (N, C) per-instance statistics into the running estimates, as torch does.

    Each instance's mean and unbiased variance enter with weight ``momentum``,
    averaged over the batch. The variance is recovered from
    rstd = 1 / sqrt(var + eps) in float64, as group_norm_fwd returns no
    variance: where var << eps, that keeps fewer digits of var than torch's
    direct computation.
    """
    if input.numel() == 0:
        # As torch, which runs BatchNorm on N copies of the estimates: an
        # empty input updates none of them, and their average over an empty
        # batch (N = 0) is NaN.
        if input.size(0) == 0:
            running_mean.fill_(math.nan)
            running_var.fill_(math.nan)
        return
    count = math.prod(input.shape[2:])  # > 1: checked by _verify_spatial_size
    warn_shape_constant("InstanceNorm's count of values per instance (running_var's correction)")
    var = rstd.double().pow(-2).sub_(eps).clamp_min_(0)
    unbiased = var * (count / (count - 1))
    # (Under torch.func transforms, instance_norm is torch's: no batched
    # statistics reach these unbatched buffers.)
    # The blend is taken in float64 and rounded once into the buffer's dtype.
    # Rounding the batch's variance into a float16 buffer first made it inf
    # above 65504, and the blend NaN at momentum 0 (0 * inf), where torch,
    # blending in float32, left the estimate as it was; torch itself rounds
    # each instance's blend to the buffer's dtype before averaging, so an
    # average that fits can still come out inf there. (Out of place: double()
    # of a float64 buffer is the buffer itself.)
    for running, batch in ((running_mean, mean.double()), (running_var, unbiased)):
        running.copy_((running.double() * (1 - momentum)).add_(batch.mean(0), alpha=momentum))


@dispatches_torch_function(twin=torch.nn.functional.instance_norm)
def instance_norm(
    input: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.instance_norm``: same arguments, defaults, result and errors.

    With ``use_input_stats`` (default), each (sample, channel) is normalized
    with its own statistics on fastopt's kernels, and the running estimates,
    when given, are updated in place with ``momentum``. Without it, the
    running estimates normalize the input.
    """
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError("Expected running_mean and running_var to be defined when use_input_stats is false")
    if not use_input_stats or eps == 0.0 or not has_kernel(input):
        # Normalizing with the running estimates is a per-channel affine map;
        # where fastopt has no kernel for the device, torch runs; and so it
        # does for eps = 0, where ATen's InstanceNorm takes 1/sqrt(var + eps)
        # as 0 on a constant instance (giving the bias, not NaN), a case the
        # group-norm kernels shared with GroupNorm and LayerNorm (NaN there,
        # in torch too) do not single out.
        return torch.nn.functional.instance_norm(
            input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps
        )
    torch.nn.functional._verify_spatial_size(input.size())  # torch's ValueError
    if input.size(0) == 0 and (weight is not None or bias is not None):
        # torch repeats weight and bias per sample, and an empty batch leaves
        # nothing for its kernel to index.
        raise IndexError("select(): index 0 out of range for tensor of size [0] at dimension 0")
    _check_instance_norm_args(
        input, {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    )
    # torch's BatchNorm on the repeated estimates refuses them if they require grad.
    check_stats_not_differentiable(running_mean, running_var)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias)):
        # torch's BatchNorm on the sample-repeated weight and bias saves those
        # copies for backward, so an in-place change of the parameters in
        # between (an optimizer step before a second backward through a
        # retained graph) is no error there. Backward saves copies here too: C values each.
        weight = None if weight is None else weight.clone()
        bias = None if bias is None else bias.clone()
    y, mean, rstd = _instance_norm(input, weight, bias, eps)
    if running_mean is not None and running_var is not None:
        _update_running_stats(input, mean, rstd, running_mean, running_var, momentum, eps)
    return y
