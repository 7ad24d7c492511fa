"""``torch.nn.functional`` drop-ins backed by fastopt's kernels.

Dropout lives in ``_dropout_functional.py``, BatchNorm in ``_batch_norm_functional.py``
and the GroupNorm family in ``_norm_functional.py``; this module is their public face.
"""

from ._batch_norm_functional import batch_norm
from ._dropout_functional import dropout, dropout1d, dropout2d, dropout3d, dropout_add
from ._norm_functional import group_norm, instance_norm, layer_norm

__all__ = [
    "batch_norm",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "dropout_add",
    "group_norm",
    "instance_norm",
    "layer_norm",
]
