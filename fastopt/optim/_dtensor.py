"""DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism): updated shard by shard.

fastopt's ops have no DTensor sharding rules, and need none: every optimizer
update and the EMA are elementwise, so each process updates its local shards
of a parameter, its gradient and its state, as torch's foreach ops on
DTensors do, with no communication. State stays DTensors, as torch's does, so
checkpoints (``torch.distributed.checkpoint``, ``get_optimizer_state_dict``)
see what they see with torch. What is not elementwise (a global gradient
norm, per-parameter update ratios) is refused for DTensor parameters.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed
    DTensor = None


def is_dtensor_type(cls: type) -> bool:
    """Whether tensors of class ``cls`` (a parameter's ``type()``) are DTensors."""
    return DTensor is not None and issubclass(cls, DTensor)


def is_dtensor(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This process's shard of a DTensor, as a plain tensor that aliases it; other tensors as they are."""
    return t.to_local() if is_dtensor(t) else t


def local_state(state: dict[str, Any]) -> dict[str, Any]:
    """A parameter's state with every DTensor entry replaced by its local shard."""
    return {k: local(v) for k, v in state.items()}


def local_grad(param: Tensor, grad: Tensor) -> Tensor:
    """The local shard of ``grad`` laid out as ``param``'s.

    A gradient placed otherwise (a Partial sum not yet reduced, say) is
    redistributed first, as a DTensor op between the two would be.
    """
    if not is_dtensor(grad):
        raise TypeError(
            f"a DTensor parameter needs a DTensor gradient, got a {type(grad).__name__}: "
            "set .grad with the parameter's device mesh and placements"
        )
    if grad.device_mesh != param.device_mesh or grad.placements != param.placements:
        grad = grad.redistribute(param.device_mesh, param.placements)
    return grad.to_local()


def refuse(what: str, instead: str) -> None:
    """Refuse an option that reduces over every shard, naming what to do ``instead``."""
    raise NotImplementedError(
        f"{what} is not supported with DTensor parameters: it reduces over every shard of "
        f"every parameter, which fastopt's shard-by-shard update does not do; {instead}"
    )
