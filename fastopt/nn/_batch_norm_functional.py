"""BatchNorm on fastopt's kernels: ``batch_norm`` and the SyncBatchNorm autograd function.

Training normalizes with the batch's statistics (``torch.ops.fastopt.batch_norm_fwd``,
one op for statistics and normalization) and updates the running estimates
as torch does; evaluation normalizes with the running estimates
(``batch_norm_apply``). Autograd is in csrc/autograd/batch_norm_autograd.cpp, fake
kernels in fastopt/_ops/batch_norm.py.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._ops.batch_norm import param_grads
from .._ops.norm import _opmath_dtype
from ._torch_function import check_tensor_input, dispatches_torch_function

ops = torch.ops.fastopt


def check_per_channel(t: Optional[Tensor], name: str, channels: int, repeats: int = 1) -> None:
    """torch's batch_norm size check of a per-channel tensor, in its words.

    ``repeats``: how many times torch's message counts the tensor, for callers
    that, as torch's instance_norm, run BatchNorm on it repeated per sample
    (with no repeats there is nothing to check).
    """
    if t is not None and t.numel() * repeats != channels * repeats:
        raise RuntimeError(f"{name} should contain {channels * repeats} elements not {t.numel() * repeats}")


# c10's names of the dtypes, as ATen's messages print them.
_SCALAR_TYPE_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.bfloat16: "BFloat16", torch.float16: "Half"}


def check_param_dtypes(
    input: Tensor, *params: Optional[Tensor], checked_first: tuple[Optional[Tensor], ...] = (), allow_mixed: bool = True
) -> None:
    """ATen's dtype rule for a CPU normalization's per-channel tensors, with its RuntimeErrors.

    They share the input's dtype, except that a bfloat16 or float16 input may
    take float32 ones ("mixed type"); whether a call is mixed is decided by
    the first of ``params`` given. Otherwise the first tensor of another dtype
    than the input's is named, looking at ``checked_first`` (some of
    ``params``) before the rest (batch_norm in training looks at its running
    estimates first). ``allow_mixed=False`` refuses the mixed case too, with
    its message. The kernels would compute any combination in the
    input's arithmetic type, but torch refuses these on the CPU, and a
    drop-in refuses what torch refuses. Other devices are left to their ops.
    The common case, every tensor in the input's dtype, costs one pass of
    dtype comparisons (0.5 us; the full check took 2 us, an eighth of a
    small BatchNorm's forward).
    """
    dtype = input.dtype
    for p in params:  # the common case first, cheaply (checked_first is a subset of params)
        if p is not None and p.dtype != dtype:
            break
    else:
        return
    if input.device.type != "cpu" or not input.is_floating_point():
        return  # an integer or complex input is refused by the op, as by torch (NotImplementedError)
    given = [p for p in params if p is not None]
    if given[0].dtype != dtype:
        if not allow_mixed or any(p.dtype != torch.float32 for p in given):
            raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
        if dtype not in (torch.bfloat16, torch.float16):
            raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
        return
    for p in (*(t for t in checked_first if t is not None), *given):
        if p.dtype != dtype:
            expected, found = (_SCALAR_TYPE_NAMES.get(d, str(d)) for d in (dtype, p.dtype))
            raise RuntimeError(f"expected scalar type {expected} but found {found}")


def _check_input(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    training: bool,
) -> int:
    """Torch's checks of F.batch_norm's arguments, in its order and words; returns the channel count.

    They run before the op, whose own checks word the same errors differently.
    As in ATen, each running estimate is checked in turn: its size if given,
    else, in evaluation, that it is missing.
    """
    if input.dim() < 2:
        raise ValueError(f"expected an input of shape (N, C, *), got {input.dim()}D input")
    channels = input.size(1)
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is None and not training:
            raise RuntimeError(f"{name} must be defined in evaluation mode")
        check_per_channel(stat, name, channels)
    check_per_channel(weight, "weight", channels)
    check_per_channel(bias, "bias", channels)
    # Training looks at the running estimates first, evaluation at weight and bias first.
    first = (running_mean, running_var) if training else ()
    check_param_dtypes(input, weight, bias, running_mean, running_var, checked_first=first)
    return channels


def _torch_evaluates_with_zero_eps() -> bool:
    """Whether the installed torch's batch_norm accepts eps = 0 in evaluation.

    torch 2.13 does (training still refuses it); torch 2.11 refuses eps <= 0 in
    both modes, with another message. fastopt follows the torch it runs with,
    so this asks torch once, at import, instead of guessing from its version.
    """
    try:
        torch.nn.functional.batch_norm(torch.zeros(1, 1), torch.zeros(1), torch.ones(1), training=False, eps=0.0)
    except ValueError:
        return False
    return True


_EVAL_ZERO_EPS = _torch_evaluates_with_zero_eps()


def _check_eps(eps: float, training: bool) -> None:
    """torch.nn.functional.batch_norm's eps check: a ValueError, as torch raises it.

    Training divides by sqrt(var + eps), and a batch's variance can be 0; in
    evaluation the running variance is assumed positive, so eps = 0 passes
    where the installed torch lets it. A NaN passes every comparison, as in torch.
    """
    if not _EVAL_ZERO_EPS:
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive, but got {eps}")
        return
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def check_stats_pair(running_mean: Optional[Tensor], running_var: Optional[Tensor]) -> None:
    """ATen's refusal (a ValueError) of one running estimate without the other in training.

    The op would update the one given and skip the other.
    """
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")


def check_stats_not_differentiable(running_mean: Optional[Tensor], running_var: Optional[Tensor]) -> None:
    """torch's refusal of running statistics that require grad.

    The ops give them no gradient (they are buffers), so rather than leave a
    silent None where the output depends on them, raise as torch does.
    """
    if not torch.is_grad_enabled():
        return
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is not None and stat.requires_grad:
            raise RuntimeError(
                f"The function 'native_batch_norm' is not differentiable with respect to argument '{name}'. "
                "This input cannot have requires_grad True."
            )


@dispatches_torch_function(twin=torch.nn.functional.batch_norm)
def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.batch_norm`` on fastopt's fused kernels.

    Same arguments and errors as torch's. Contiguous and channels-last inputs
    run natively and the output keeps the input's memory format. In training,
    the running estimates (when given) are updated in place with the batch
    mean and unbiased variance.
    """
    if training:
        torch.nn.functional._verify_batch_size(input.size())  # torch's ValueError, checked first as in torch
    check_tensor_input("batch_norm", input)
    _check_eps(eps, training)
    _check_input(input, running_mean, running_var, weight, bias, training)
    # ATen's order: the argument checks above, then autograd's refusal of
    # differentiable estimates, then the kernel's check of the pair.
    check_stats_not_differentiable(running_mean, running_var)
    if training:
        check_stats_pair(running_mean, running_var)
        # The op updates the running estimates too, from its count of values
        # per channel (> 1 unless the batch is empty, checked above; an empty
        # one leaves them alone, as in torch).
        return ops.batch_norm_fwd(input, weight, bias, eps, running_mean, running_var, momentum)[0]
    return ops.batch_norm_eval(input, running_mean, running_var, weight, bias, eps)


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode BatchNorm whose statistics span every process of ``process_group``.

    Forward: local per-channel (count, mean, M2) from ``batch_norm_stats``,
    merged exactly across processes by two float64 all_reduces (the global
    mean, then each process's M2 recentred on it), then ``batch_norm_apply``.
    Backward: local sums of dy and dy * (x - mean), all-reduced, then
    ``batch_norm_bwd_elemt``. grad_weight and grad_bias stay local, as in
    torch: DistributedDataParallel averages parameter gradients itself.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        weight: Optional[Tensor],
        bias: Optional[Tensor],
        running_mean: Optional[Tensor],
        running_var: Optional[Tensor],
        eps: float,
        momentum: float,
        process_group: Any,
        world_size: int,
    ) -> Tensor:
        channels = _check_input(input, running_mean, running_var, weight, bias, training=True)
        local_count = input.numel() // channels if channels else 0
        mean, m2 = ops.batch_norm_stats(input)
        totals = torch.cat([mean.new_full((1,), local_count, dtype=torch.float64), mean.double() * local_count])
        dist.all_reduce(totals, group=process_group)
        count = int(totals[0].item())
        if count == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )
        global_mean = totals[1:] / max(count, 1)
        spread = m2.double() + local_count * (mean.double() - global_mean).square()
        dist.all_reduce(spread, group=process_group)
        opmath = _opmath_dtype(input.dtype)
        invstd = torch.rsqrt(spread / max(count, 1) + eps).to(opmath)
        mean = global_mean.to(opmath)
        if count > 0 and (running_mean is not None or running_var is not None):
            ops.batch_norm_update_stats_(running_mean, running_var, global_mean, spread / count, momentum, count)
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.count = count
        ctx.process_group = process_group
        return ops.batch_norm_apply(input, mean, invstd, weight, bias)

    @staticmethod
    @once_differentiable  # no double backward: differentiating this backward raises rather than silently giving 0
    def backward(ctx: Any, grad_output: Tensor) -> tuple:  # type: ignore[override]
        input, weight, mean, invstd = ctx.saved_tensors
        sum_dy, sum_dy_xmu = ops.batch_norm_bwd_reduce(grad_output, input, mean)
        grad_weight, grad_bias = param_grads(
            ctx.needs_input_grad[1], ctx.needs_input_grad[2], sum_dy, sum_dy_xmu, invstd, weight
        )
        grad_input = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(sums, group=ctx.process_group)
            sum_dy, sum_dy_xmu = sums.chunk(2)
            grad_input = ops.batch_norm_bwd_elemt(
                grad_output, input, mean, invstd, weight, sum_dy, sum_dy_xmu, max(ctx.count, 1)
            )
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None
