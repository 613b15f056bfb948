"""CUDA C++ kernels of the GPU ops (``bgblur.ops.*_gpu``) and the helpers that launch them.

Each ``<name>.cu`` file beside this one is compiled once per process and device by NVRTC into a
``cupy.RawModule`` (CuPy also keeps the binary in its on-disk kernel cache). Local
``#include "x.cuh"`` lines are inlined here, with ``#line`` markers so that compiler messages name
the right file and line, and so that CuPy's cache key (a hash of the source) changes whenever a
header does. Kernels are ``extern "C"``: no mangled names, no ``name_expressions``.

Launch conventions (see ``common.cuh``): images are passed as a pointer to their first element
plus element strides (``int64``), so non-contiguous CuPy views need no copy; the batch index is
``blockIdx.z``; every launch goes to the current CuPy stream; nothing here synchronises the host.
"""

from __future__ import annotations

import functools
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent

# Not --use_fast_math: several kernels reproduce OpenCV's arithmetic bit for bit. --fmad=false
# keeps any a * b + c written without the *_rn intrinsics from being contracted into an FMA.
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++14", "--fmad=false")

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_lock = threading.Lock()
_modules: dict[tuple[str, int], Any] = {}


def read_source(name: str) -> str:
    """The source of ``<name>.cu`` with its local ``#include "..."`` headers inlined (once each)."""
    return _expand(KERNEL_DIR / f"{name}.cu", set())


def _expand(path: Path, seen: set[Path]) -> str:
    text = path.read_text(encoding="utf-8")
    out: list[str] = [f'#line 1 "{path.name}"\n']
    pos = 0
    for match in _INCLUDE.finditer(text):
        out.append(text[pos : match.start()])
        header = (path.parent / match.group(1)).resolve()
        if header not in seen:
            seen.add(header)
            out.append(_expand(header, seen))
        line = text.count("\n", 0, match.end()) + 2  # the line after the #include
        out.append(f'\n#line {line} "{path.name}"')
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def get_module(name: str) -> Any:
    """The ``cupy.RawModule`` of ``<name>.cu`` for the current device (built once, then cached)."""
    import cupy

    key = (name, int(cupy.cuda.runtime.getDevice()))
    module = _modules.get(key)
    if module is None:
        with _lock:
            module = _modules.get(key)
            if module is None:
                module = cupy.RawModule(code=read_source(name), options=NVRTC_OPTIONS)
                _modules[key] = module
    return module


@functools.cache
def _kernel(module_name: str, kernel_name: str, device: int) -> Any:
    return get_module(module_name).get_function(kernel_name)


def get_kernel(module_name: str, kernel_name: str) -> Any:
    """Kernel ``kernel_name`` of ``<module_name>.cu`` on the current device (cached)."""
    import cupy

    return _kernel(module_name, kernel_name, int(cupy.cuda.runtime.getDevice()))


def compiled_modules() -> set[tuple[str, int]]:
    """``(module name, device)`` of every module built so far in this process."""
    return set(_modules)


def forget_compiled() -> None:
    """Drop every built module and kernel handle (the next use builds them again; CuPy's disk
    cache may still make that fast). For tests of what builds them, such as the warm-up."""
    with _lock:
        _modules.clear()
        _kernel.cache_clear()


# ---- launch helpers ---------------------------------------------------------------------------

# CUDA's limit on gridDim.y and gridDim.z.
MAX_GRID_YZ = 65535
# Static limit of shared memory per block (no opt-in attribute needed below it).
SHARED_MEMORY_LIMIT = 48 * 1024


def i32(value: int) -> np.int32:
    return np.int32(value)


def f32(value: float) -> np.float32:
    return np.float32(value)


def f64(value: float) -> np.float64:
    return np.float64(value)


def strides(array: Any) -> tuple[np.int64, ...]:
    """Element strides of a CuPy array, as ``int64`` kernel arguments (negative ones allowed)."""
    itemsize = array.dtype.itemsize
    out = []
    for s in array.strides:
        if s % itemsize:
            raise ValueError(f"stride {s} of {array.shape} is not a multiple of {itemsize} bytes")
        out.append(np.int64(s // itemsize))
    return tuple(out)


def blocks(n: int, per_block: int) -> int:
    """Number of blocks of ``per_block`` covering ``n`` items."""
    return (n + per_block - 1) // per_block


def check_grid(op: str, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """``grid``, after checking CUDA's limits on its y and z dimensions."""
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise ValueError(
            f"{op}: launch grid {grid} exceeds CUDA's limit of {MAX_GRID_YZ} blocks in y / z "
            "(image too tall or batch too large for the GPU kernel)"
        )
    return grid


def require_u8(op: str, **arrays: Any) -> None:
    """Raise ValueError unless every array is uint8 (the GPU kernels read and write bytes)."""
    for name, array in arrays.items():
        if array.dtype != np.uint8:
            raise ValueError(f"{op} on the GPU needs uint8 {name}, got {array.dtype}")
