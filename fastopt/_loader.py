"""Loads fastopt._C, refusing a torch that the extension was not built for.

A C++ extension is tied to the torch it was compiled against: the C++ ABI of
libtorch changes between minor releases, and loading across them fails with
an undefined-symbol error, or worse, runs with mismatched struct layouts. So
the torch version is checked before the shared library is opened.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


def check_torch_version(built: str, running: str) -> None:
    """Raise ImportError unless ``running`` torch can load an extension built for ``built``."""
    if _major_minor(built) != _major_minor(running):
        raise ImportError(
            f"fastopt was compiled against torch {built}, but torch {running} is installed. "
            "C++ extensions only load under the torch minor release they were built for; "
            "rebuild fastopt against this torch from its source checkout with "
            "`pip install --no-build-isolation --force-reinstall --no-deps .`."
        )


def load_extension() -> ModuleType:
    """Import and return ``fastopt._C`` after the torch version check."""
    try:
        build_config = importlib.import_module("fastopt._build_config")
    except ImportError as e:
        raise ImportError(
            "fastopt's compiled extension is missing; build it with "
            "`pip install --no-build-isolation .` from the fastopt checkout"
        ) from e
    check_torch_version(build_config.TORCH_VERSION, torch.__version__)
    return importlib.import_module("fastopt._C")
