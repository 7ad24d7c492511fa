"""Python side of the ``torch.ops.fastopt`` operators, one module per op family.

The schemas and the CPU/CUDA kernels are registered in C++ (csrc/). Here each
op gets its fake (meta) kernel, which tells torch.compile what the op does to
shapes without running it, and the ops that take part in autograd get their
backward formulas.
"""

from __future__ import annotations

import torch

ops = torch.ops.fastopt

from . import batch_norm, dropout, norm, optim  # noqa: E402,F401  (each registers its family)
