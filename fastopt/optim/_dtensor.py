"""DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism): updated shard by shard.

fastopt's ops have no DTensor sharding rules, and need none: every optimizer
update and the EMA are elementwise, so each process updates its local shards
of a parameter, its gradient and its state, as torch's foreach ops on
DTensors do, with no communication. State stays DTensors, as torch's does, so
checkpoints (``torch.distributed.checkpoint``, ``get_optimizer_state_dict``)
see what they see with torch. What is not elementwise (a global gradient
norm, per-parameter update ratios) is refused for DTensor parameters, and so
is stochastic rounding, whose random words each process would draw alone.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import Tensor


def dtensor_class() -> type | None:
    """DTensor, if torch.distributed.tensor has been imported: no DTensor exists before.

    Not imported here: it costs 0.6 s, which every process importing fastopt
    (DataLoader workers included) would pay.
    """
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def is_dtensor(t: Any) -> bool:
    dtensor = dtensor_class()
    return dtensor is not None and isinstance(t, dtensor)


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
    """Refuse an option that shard-by-shard updates cannot give, naming what to do ``instead``."""
    raise NotImplementedError(
        f"{what} is not supported with DTensor parameters, which fastopt updates shard by shard; {instead}"
    )
