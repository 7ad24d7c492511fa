"""BatchNorm1d/2d/3d and SyncBatchNorm: torch's modules with fastopt's fused kernels.

The modules subclass torch's, so constructor, parameters, buffers
(``running_mean``, ``running_var``, ``num_batches_tracked``), ``state_dict``,
input-dimension checks and ``repr`` are torch's own; only ``forward`` changes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ._batch_norm_functional import SyncBatchNormFunction, batch_norm
from ._scripting import ScriptsAsTorch
from ._torch_function import dispatches_torch_function, fx_leaf, fx_tracing


def _read_cumulative_factor(num_batches_tracked: Tensor) -> float:
    return 1.0 / float(num_batches_tracked)


# _read_cumulative_factor behind torch.compiler.disable, made on first use:
# the decorator imports torch._dynamo, a second at import for every process.
_outside_graph: list[Callable[[Tensor], float]] = []


def _cumulative_factor(num_batches_tracked: Tensor) -> float:
    """1 / num_batches_tracked, read on the host, where torch.compile breaks the graph.

    Traced, ``float(tensor)`` is a graph break too, or with dynamo's
    ``capture_scalar_outputs`` a symbolic float, which the op's ``float
    momentum`` cannot take; torch's own BatchNorm, whose op can, then runs.
    Outside the graph the factor is a plain float in either case.
    """
    if not _outside_graph:
        _outside_graph.append(torch.compiler.disable(_read_cumulative_factor))
    return _outside_graph[0](num_batches_tracked)


def _batch_norm_mode(
    training: bool,
    track_running_stats: bool,
    momentum: Optional[float],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    num_batches_tracked: Optional[Tensor],
) -> tuple[bool, Optional[Tensor], Optional[Tensor], float]:
    """(use batch statistics, running_mean, running_var, momentum) as torch's forward decides them.

    Counts the batch in ``num_batches_tracked`` when training with tracked
    statistics; ``momentum=None`` means a cumulative average, with factor
    1 / num_batches_tracked.
    """
    factor = 0.0 if momentum is None else momentum
    if training and track_running_stats and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:
            factor = _cumulative_factor(num_batches_tracked)
    use_batch_stats = training or (running_mean is None and running_var is None)
    # Buffers are passed only where they are read or updated.
    tracked = not training or track_running_stats
    return use_batch_stats, running_mean if tracked else None, running_var if tracked else None, factor


@dispatches_torch_function(twin=None)  # batch_norm has the twin
def _batch_norm_module(
    input: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    num_batches_tracked: Optional[Tensor],
    training: bool,
    track_running_stats: bool,
    momentum: Optional[float],
    eps: float,
) -> Tensor:
    """The forward of a BatchNorm module after its input checks, as one call.

    One call, with the buffers as arguments, so that torch.fx records it as one
    node: the count of ``num_batches_tracked`` (and the factor it gives with
    ``momentum=None``) then happens when the traced module runs, not once at
    tracing time.
    """
    use_batch_stats, running_mean, running_var, factor = _batch_norm_mode(
        training, track_running_stats, momentum, running_mean, running_var, num_batches_tracked
    )
    return batch_norm(input, running_mean, running_var, weight, bias, use_batch_stats, factor, eps)


class _FusedBatchNorm(ScriptsAsTorch):
    """Mixin with the forward of torch's ``_BatchNorm`` on fastopt's kernels."""

    def _module_args(self) -> tuple:
        # Parameters and buffers are read from their dicts: found as
        # attributes, each goes through nn.Module.__getattr__, which cost
        # 3.3 us for the five on the 2-core dev VM, a tenth of the whole
        # forward on a small input. A name missing from its dict (a
        # parametrization's property, weight_norm's plain attribute) is looked
        # up as an attribute, as nn.Module would find it.
        params, buffers = self._parameters, self._buffers
        return (
            params["weight"] if "weight" in params else self.weight,
            params["bias"] if "bias" in params else self.bias,
            buffers["running_mean"] if "running_mean" in buffers else self.running_mean,
            buffers["running_var"] if "running_var" in buffers else self.running_var,
            buffers["num_batches_tracked"] if "num_batches_tracked" in buffers else self.num_batches_tracked,
            self.training,
            self.track_running_stats,
            self.momentum,
            self.eps,
        )

    @fx_leaf
    def forward(self, input: Tensor) -> Tensor:
        if not fx_tracing(input):
            self._check_input_dim(input)
        return _batch_norm_module(input, *self._module_args())


class BatchNorm1d(_FusedBatchNorm, torch.nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` on fastopt's fused kernels: inputs (N, C) or (N, C, L)."""


class BatchNorm2d(_FusedBatchNorm, torch.nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` on fastopt's fused kernels, NCHW and channels-last (NHWC) alike."""


class BatchNorm3d(_FusedBatchNorm, torch.nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` on fastopt's fused kernels, NCDHW and channels-last (NDHWC) alike."""


class SyncBatchNorm(_FusedBatchNorm, torch.nn.SyncBatchNorm):
    """:class:`torch.nn.SyncBatchNorm` on fastopt's kernels, on any torch.distributed backend.

    In training, with a process group of more than one process, the batch
    statistics are those of the union of every process's batch, reduced with
    ``torch.distributed.all_reduce`` (gloo for CPU tensors, NCCL for CUDA
    ones). Otherwise it is a plain BatchNorm, as in torch. On the CPU,
    ``DistributedDataParallel`` refuses a model holding any
    ``torch.nn.SyncBatchNorm``, this subclass included (torch's check).
    """

    @fx_leaf
    def forward(self, input: Tensor) -> Tensor:
        if fx_tracing(input):
            # As a plain BatchNorm: a traced graph holds no process group.
            return _batch_norm_module(input, *self._module_args())
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        if self.training and self.track_running_stats and self.num_batches_tracked is None:
            # torch's SyncBatchNorm asserts this, where BatchNorm quietly skips the count.
            raise AssertionError("num_batches_tracked must not be None")
        group, world_size = self._sync_group()
        if world_size <= 1:
            return _batch_norm_module(input, *self._module_args())
        _, running_mean, running_var, factor = _batch_norm_mode(
            self.training, self.track_running_stats, self.momentum, self.running_mean, self.running_var,
            self.num_batches_tracked,
        )
        return SyncBatchNormFunction.apply(
            input, self.weight, self.bias, running_mean, running_var, self.eps, factor, group, world_size
        )

    def _sync_group(self) -> tuple[Any, int]:
        """The process group to reduce over and its size (1: nothing to synchronise)."""
        dist = torch.distributed
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None, 1
        group = self.process_group or dist.group.WORLD
        return group, dist.get_world_size(group)

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group: Any = None) -> torch.nn.Module:
        """Replace every BatchNorm*D layer in ``module`` by a fastopt :class:`SyncBatchNorm`.

        As :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`: the new layer
        takes the old one's parameters, running statistics, batch count,
        ``qconfig`` and training mode; returns the converted module (a new
        object when ``module`` itself is a BatchNorm).
        """
        output = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            output = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
            )
            if module.affine:
                with torch.no_grad():
                    output.weight = module.weight
                    output.bias = module.bias
            output.running_mean = module.running_mean
            output.running_var = module.running_var
            output.num_batches_tracked = module.num_batches_tracked
            output.training = module.training
            if hasattr(module, "qconfig"):
                output.qconfig = module.qconfig
        for name, child in module.named_children():
            output.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        del module
        return output
