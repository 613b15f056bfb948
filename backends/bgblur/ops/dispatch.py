"""Device dispatch for the ops: which array library an array belongs to."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def is_gpu_array(array: Any) -> bool:
    """True for a CuPy array (GPU), False for a NumPy array (CPU)."""
    return type(array).__module__.startswith("cupy")


def array_module(array: Any) -> ModuleType:
    """``cupy`` for a CuPy array, else ``numpy``."""
    if is_gpu_array(array):
        import cupy

        return cupy
    return np


def check_out(out: Any, shape: tuple[int, ...], dtype: Any, like: Any) -> Any:
    """``out`` after checking it, or a new array of ``shape``/``dtype`` on ``like``'s device."""
    xp = array_module(like)
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != np.dtype(dtype):
        raise ValueError(
            f"out must have shape {tuple(shape)} and dtype {np.dtype(dtype)}, "
            f"got {tuple(out.shape)} {out.dtype}"
        )
    if is_gpu_array(out) != is_gpu_array(like):
        raise ValueError("out must live on the same device as the input")
    return out
