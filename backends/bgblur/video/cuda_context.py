"""The CUDA context the video codec bindings work in, and a guard for the calling thread's.

CuPy, torch and Triton work in each device's *primary* context. PyNvVideoCodec, given no
``cudacontext``, creates a context of its own with ``cuCtxCreate``, which also makes it current
on the calling thread; when the session then fails to open (NVENC on an H100/H200, which have
none) that context can stay current there. Every later CUDA runtime call on that thread (CuPy,
torch) then works in the wrong context: events and streams of the primary context give
``cudaErrorInvalidResourceHandle``, and the null stream is not the one the rest of the process
orders its work on. So the bindings are given the primary context explicitly
(:func:`primary_context`), and calls into them run inside :func:`thread_context_kept`, which puts
the thread's context back if a binding changed it anyway.

Driver API through ``ctypes`` (``libcuda.so.1``), so that no binding's view of "current" is
trusted for the answer.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from collections.abc import Iterator

LOG = logging.getLogger("bgblur.video")

_MAX_POPS = 8  # contexts a misbehaving binding could have pushed; more is not plausible


@functools.cache
def _libcuda() -> ctypes.CDLL:
    lib = ctypes.CDLL("libcuda.so.1")
    _check(lib.cuInit(0), "cuInit")
    return lib


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"{call} failed with CUDA driver error {status}")


def primary_context(gpu_index: int) -> int:
    """The handle (``CUcontext`` as int) of GPU ``gpu_index``'s primary context.

    Retained and released again at once: the CUDA runtime (CuPy's, torch's) holds the
    reference that keeps it alive for the life of the process. Known gap: in a process where
    no runtime has retained it yet (a client decoding on the CPU), the release drops the last
    reference before the codec uses the handle; that only matters where NVENC exists (the
    probe). Keeping the reference would close it.
    """
    lib = _libcuda()
    device = ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(device), int(gpu_index)), "cuDeviceGet")
    context = ctypes.c_void_p()
    _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    _check(lib.cuDevicePrimaryCtxRelease_v2(device), "cuDevicePrimaryCtxRelease")
    return int(context.value or 0)


def current_context() -> int:
    """The context current on the calling thread (0: none)."""
    context = ctypes.c_void_p()
    _check(_libcuda().cuCtxGetCurrent(ctypes.byref(context)), "cuCtxGetCurrent")
    return int(context.value or 0)


@contextlib.contextmanager
def thread_context_kept(what: str) -> Iterator[None]:
    """Run the block, then make the thread's context the one it had before (popping what the
    block pushed, else setting it), with a warning naming ``what`` when it had changed."""
    lib = _libcuda()
    before = current_context()
    try:
        yield
    finally:
        after = current_context()
        if after != before:
            LOG.warning("%s changed this thread's CUDA context; restoring it", what)
            popped = ctypes.c_void_p()
            for _ in range(_MAX_POPS):
                if current_context() in (before, 0) or lib.cuCtxPopCurrent_v2(ctypes.byref(popped)):
                    break
            if current_context() != before:
                _check(lib.cuCtxSetCurrent(ctypes.c_void_p(before or None)), "cuCtxSetCurrent")
