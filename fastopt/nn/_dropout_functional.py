"""Inverted dropout on a counter-based RNG: ``torch.nn.functional`` drop-ins.

The mask of a call is drawn from Philox 4x32-10 at counters given by each
element's index, under a key drawn from torch's generator (see NOTE: [dropout
stream] in csrc/common/philox.h for the CPU and CUDA layouts). Backward regenerates it from the key, so autograd keeps
two int64 words for a dropout instead of torch's bool or float mask.

Random streams: the key is drawn with :func:`torch.randint` from ``generator``
or, by default, from torch's default generator of the input's device. That
advances the generator, so :func:`torch.manual_seed` reproduces a run and
consecutive calls draw different masks. The masks differ from torch's own
dropout for the same seed, and a CPU tensor and a CUDA tensor draw from
different generators (the CPU one and the device's), so their masks differ
too. Under :func:`torch.compile` the key comes from the compiled randint
(inductor's own RNG, seeded from the same default generator), so compiled and
eager masks differ while each stays reproducible.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch import Tensor

from .. import _ops
from ._torch_function import check_tensor_input, dispatches_torch_function, warn_shape_constant

__all__ = ["dropout", "dropout1d", "dropout2d", "dropout3d", "dropout_add"]

# The key and the counter offset are drawn below 2**62: 124 random bits are
# ample, and the bounds stay clear of int64 overflow in every randint
# implementation (eager, and inductor's decomposition under torch.compile).
_SEED_BOUND = 2**62


def _draw_seed(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Two int64 words (Philox key, counter offset) from ``generator``.

    Drawing them with a tensor op, rather than reading the generator's state on
    the host, is what keeps this traceable: torch.compile and CUDA graphs both
    handle torch.randint, and on CUDA the words stay on the device.
    """
    return torch.randint(_SEED_BOUND, (2,), device=x.device, dtype=torch.int64, generator=generator)


def _check_p(p: float) -> None:
    """torch.nn.functional's range check: a ValueError. A NaN passes it, as in torch."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _check_training(training: bool, op: str, inplace: bool) -> None:
    """torch's argument parser's check that ``training`` is a bool, a TypeError naming ATen's ``op``.

    Only a real bool passes (not an int, a numpy bool or a tensor): torch
    refuses the rest rather than guess a truth value.
    """
    if not isinstance(training, bool):
        # The parser prints the C type name: a class's own name ("Tensor"), a
        # static extension type's dotted one ("numpy.bool").
        cls = type(training)
        heap_type = bool(cls.__flags__ & (1 << 9))  # Py_TPFLAGS_HEAPTYPE
        name = cls.__name__ if heap_type or cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
        raise TypeError(f"{op}{'_' if inplace else ''}(): argument 'train' (position 3) must be bool, not {name}")


def _check_p_like_aten(p: float) -> None:
    """ATen's range check, which is what rejects a NaN (every comparison with it is False).

    Called where torch enters ATen, after its Python checks and warnings, in
    evaluation too: ATen checks p before it looks at ``train``.
    """
    if not 0.0 <= p <= 1.0:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {p}")


# How backward gets the mask: "recompute" redraws it from the two saved seed
# words; "bits" saves it bit-packed (1 bit per element) and skips the redraw.
MASK_MODES = ("recompute", "bits")


def check_mask_mode(mask: str) -> str:
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, but got {mask!r}")
    return mask


def _maskless_dropout(input: Tensor, p: float, inplace: bool) -> Tensor | None:
    """The result of a training-mode dropout that draws no mask (p = 0, p = 1 or an empty input), else None.

    As ATen's _dropout_impl, these cases come before any check of the input's
    shape: feature dropout of a 1-D input is an error only when a mask is drawn.
    """
    if p == 0.0 or input.numel() == 0:
        return input  # as torch: the input itself
    if p == 1.0:
        # As torch: a multiplication by zero, which keeps NaNs and signs. The
        # zero has the input's dtype, as ATen's, so that the result keeps it
        # (a Python 0 would promote a bool input to int64, and then an
        # in-place product could not be written back).
        zero = input.new_zeros(())
        return input.mul_(zero) if inplace else input * zero
    return None


def _dropout_impl(
    input: Tensor, p: float, inplace: bool, group: int, generator: torch.Generator | None, mask: str = "recompute"
) -> Tensor:
    """Training-mode dropout with ``group`` consecutive elements per mask entry."""
    result = _maskless_dropout(input, p, inplace)
    if result is not None:
        return result
    seed = _draw_seed(input, generator)
    if mask == "bits":
        # Only element-wise dropout offers it (group == 1): the channel-wise
        # forms draw one word per channel, which is as cheap to redraw as to store.
        out, _bits = _ops.ops.dropout_bits(input, seed, p)
        return input.copy_(out) if inplace else out
    if not inplace:
        return _ops.ops.dropout(input, seed, p, group)
    if torch.is_grad_enabled() and input.requires_grad:
        # The in-place op has no autograd formula; the functional op with a
        # copy does, and autograd rejects in-place writes to leaves as torch does.
        return input.copy_(_ops.ops.dropout(input, seed, p, group))
    _ops.ops.dropout_(input, seed, p, group)
    return input


# Twins for torch.func transforms (see dispatches_torch_function): torch's
# functionals, whose masks come from torch's own RNG. They take no generator.


def _refuse_generator(name: str, generator: torch.Generator | None, p: float, training: bool) -> None:
    """Refuse a generator where a mask would be drawn from it (eager ignores it elsewhere)."""
    if generator is not None and training and 0.0 < p < 1.0:
        raise NotImplementedError(
            f"fastopt.nn.functional.{name}: under torch.func transforms the result is torch's {name}, "
            "which draws from the default generator; a generator argument is not supported there"
        )


def _torch_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
    *,
    mask: str = "recompute",
) -> Tensor:
    check_mask_mode(mask)
    _refuse_generator("dropout", generator, p, training)
    return torch.nn.functional.dropout(input, p, training, inplace)


def _torch_feature_dropout(name: str) -> Callable[..., Tensor]:
    torch_fn = getattr(torch.nn.functional, name)

    def twin(
        input: Tensor,
        p: float = 0.5,
        training: bool = True,
        inplace: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        _refuse_generator(name, generator, p, training)
        return torch_fn(input, p, training, inplace)

    return twin


def _torch_dropout_add(
    x: Tensor,
    residual: Tensor,
    p: float = 0.5,
    training: bool = True,
    bias: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    _refuse_generator("dropout_add", generator, p, training)
    pre = x if bias is None else x + bias
    return torch.nn.functional.dropout(pre, p, training) + residual


@dispatches_torch_function(twin=_torch_dropout)
def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
    *,
    mask: str = "recompute",
) -> Tensor:
    """Zero each element with probability ``p`` and scale survivors by ``1 / (1 - p)``.

    Like :func:`torch.nn.functional.dropout`, plus ``generator``, the
    :class:`torch.Generator` to draw the mask's key from (default: torch's
    default generator of ``input``'s device), and ``mask``, how backward gets
    the mask: ``"recompute"`` (default) saves two int64 words and redraws it;
    ``"bits"`` saves it bit-packed, one bit per element (torch saves a byte or
    four), and backward is then a plain pass over the gradient. Both modes draw
    the same mask from the same generator state. In evaluation
    (``training=False``) or with ``p=0`` the input itself is returned; with
    ``p=1`` the result is ``input * 0``. The result is contiguous, or
    channels-last for a channels-last input, as torch's.
    """
    _check_p(p)
    check_mask_mode(mask)
    # Then torch's argument parser, in argument order: input, then training.
    check_tensor_input("dropout_" if inplace else "dropout", input)
    _check_training(training, "dropout", inplace)
    _check_p_like_aten(p)
    if not training:
        return input
    return _dropout_impl(input, p, inplace, 1, generator, mask)


def _feature_dropout(
    input: Tensor, p: float, training: bool, inplace: bool, generator: torch.Generator | None
) -> Tensor:
    """Channel-wise dropout: one mask entry per ``input[n, c]``, like ATen's feature_dropout."""
    _check_training(training, "feature_dropout", inplace)
    _check_p_like_aten(p)
    if not training:
        return input
    result = _maskless_dropout(input, p, inplace)
    if result is not None:
        return result
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    warn_shape_constant("channel-wise dropout's channel size")
    return _dropout_impl(input, p, inplace, math.prod(input.shape[2:]), generator)


def _batched_feature_dropout(
    input: Tensor, p: float, training: bool, inplace: bool, generator: torch.Generator | None, batched: bool
) -> Tensor:
    """Feature dropout of an input that may lack its batch dimension, as torch handles it."""
    if not batched:
        input = input.unsqueeze_(0) if inplace else input.unsqueeze(0)
    result = _feature_dropout(input, p, training, inplace, generator)
    if not batched:
        result = result.squeeze_(0) if inplace else result.squeeze(0)
    return result


@dispatches_torch_function(twin=_torch_feature_dropout("dropout1d"))
def dropout1d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Zero whole channels of a (N, C, L) or (C, L) input; see :func:`torch.nn.functional.dropout1d`."""
    _check_p(p)
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input. "
            "Note that dropout1d exists to provide channel-wise dropout on inputs with 1 "
            "spatial dimension, a channel dimension, and an optional batch dimension "
            "(i.e. 2D or 3D inputs)."
        )
    return _batched_feature_dropout(input, p, training, inplace, generator, batched=input.dim() == 3)


# The stacklevels of the warnings below point, as torch's do, at the line that
# called the functional (in a module's forward, at that forward): they count
# the frames of the functional and of the dispatching wrapper that
# dispatches_torch_function puts around it.


def _warn_feature_dims(name: str, dim: int, expected: tuple[int, int], spatial: int) -> None:
    """torch's deprecation warning for a channel-wise dropout of an input of another rank.

    Called from the functional itself: stacklevel 4 skips this function, the
    functional and its dispatching wrapper.
    """
    if dim not in expected:
        warnings.warn(
            f"{name}: Received a {dim}-D input to {name}, which is deprecated "
            "and will result in an error in a future release. To retain the behavior "
            "and silence this warning, please use dropout instead. Note that "
            f"{name} exists to provide channel-wise dropout on inputs with {spatial} spatial "
            "dimensions, a channel dimension, and an optional batch dimension "
            f"(i.e. {expected[0]}D or {expected[1]}D inputs).",
            stacklevel=4,
        )


@dispatches_torch_function(twin=_torch_feature_dropout("dropout2d"))
def dropout2d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Zero whole channels of a (N, C, H, W) input; see :func:`torch.nn.functional.dropout2d`.

    As in torch, a 3-D input is taken as (N, C, L) (torch's historical behaviour).
    """
    _check_p(p)
    _warn_feature_dims("dropout2d", input.dim(), (3, 4), 2)
    if input.dim() == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
            "1D dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
            "is the channel dim. This behavior will change in a future release to interpret the "
            "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
            "channel-wise dropout behavior, please switch to using dropout1d instead.",
            stacklevel=3,  # past dropout2d and its dispatching wrapper
        )
    return _feature_dropout(input, p, training, inplace, generator)


@dispatches_torch_function(twin=_torch_feature_dropout("dropout3d"))
def dropout3d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Zero whole channels of a (N, C, D, H, W) or (C, D, H, W) input; see :func:`torch.nn.functional.dropout3d`."""
    _check_p(p)
    _warn_feature_dims("dropout3d", input.dim(), (4, 5), 3)
    return _batched_feature_dropout(input, p, training, inplace, generator, batched=input.dim() == 5)


def _fuses(x: Tensor, residual: Tensor, bias: Tensor | None) -> bool:
    """Whether the fused dropout_add op takes these arguments.

    It takes dense tensors on x's device with x's dtype: a residual of x's
    shape and a bias, if any, 1-D with x.size(-1) elements. Anything else
    (under autocast, a bfloat16 x from a Linear with a float32 residual; a
    bias that broadcasts otherwise) is torch's composition's to handle.
    """

    def like_x(t: Tensor) -> bool:
        return t.layout == torch.strided and t.device == x.device and t.dtype == x.dtype

    if x.layout != torch.strided or not like_x(residual) or residual.shape != x.shape:
        return False
    return bias is None or (like_x(bias) and bias.dim() == 1 and x.dim() >= 1 and bias.shape[0] == x.shape[-1])


@dispatches_torch_function(twin=_torch_dropout_add)
def dropout_add(
    x: Tensor,
    residual: Tensor,
    p: float = 0.5,
    training: bool = True,
    bias: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``dropout(x + bias, p) + residual``, in one pass forward and backward where it can.

    The residual connection of a transformer block. The fused pass takes a
    ``bias`` (optional) 1-D with ``x.size(-1)`` elements, broadcast like a
    Linear layer's bias, and a ``residual`` of ``x``'s shape, all three of
    one dtype and device. Its arithmetic is done in float32 for 16-bit inputs
    (float64 for float64) with one rounding at the end, so in bfloat16/float16
    the result can differ from the unfused composition by that composition's
    own roundings. Other arguments (a float32 residual under autocast, a bias
    that broadcasts otherwise) get the composition, with torch's broadcasting,
    type promotion and errors, on fastopt's dropout: it draws the same mask as
    the fused pass from the same generator state. In evaluation or with
    ``p=0``, the result is ``(x + bias) + residual``.
    """
    _check_p(p)
    _check_training(training, "dropout", False)
    _check_p_like_aten(p)  # a NaN fails as in dropout
    if training and p != 0.0 and _fuses(x, residual, bias):
        return _ops.ops.dropout_add(x, residual, bias, _draw_seed(x, generator), p)
    pre = x if bias is None else x + bias
    if training:
        # Draws its key from the generator as the fused pass does (pre is on
        # x's device whenever the fused pass could have run), so the mask is
        # the one the fused pass would have drawn at the same generator state.
        pre = _dropout_impl(pre, p, False, 1, generator)
    return pre + residual
