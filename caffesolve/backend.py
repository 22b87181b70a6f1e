"""Which array module a piece of layer math runs on.

Layer code asks `array_module(x)` for the module of the arrays it was given
instead of importing numpy directly, so the same code can later run on CuPy
arrays. Today every blob holds NumPy arrays.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def array_module(*arrays: Any) -> ModuleType:
    """The module (numpy, later cupy) that owns `arrays`; numpy by default."""
    for a in arrays:
        module = type(a).__module__.split(".")[0]
        if module == "cupy":  # pragma: no cover - no CuPy backend yet
            import cupy

            return cupy
    return np
