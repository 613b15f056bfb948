"""Shared-memory transports: frames and results pass through memory the server maps directly.

Raw gRPC/HTTP copies every 1080p frame (6 MB) through the network stack several times; on the
same host a registered region avoids that. ``SystemSharedMemory`` uses POSIX shared memory
(host RAM); ``CudaSharedMemory`` uses GPU memory shared with the server through CUDA IPC (the
frames may already live on the GPU, e.g. decoded by NVDEC, and the results can stay there).

One instance serves one tritonclient connection: its regions are registered on that
connection's server under unique names, grown when a larger batch comes, and unregistered and
freed by ``close()``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
import warnings
from typing import Any, Literal

import numpy as np

from bgblur_client.admin_key import (
    SHARED_MEMORY_PREFIX,
    admin_headers_for,
    give_region_to_server,
)
from bgblur_client.errors import UsageError

SharedMemoryKind = Literal["none", "system", "cuda"]
SHARED_MEMORY_KINDS: tuple[SharedMemoryKind, ...] = ("none", "system", "cuda")
SharedMemoryChoice = Literal["auto", "none", "system", "cuda"]
SHARED_MEMORY_CHOICES: tuple[SharedMemoryChoice, ...] = ("auto", *SHARED_MEMORY_KINDS)
_PROBE_BYTES = 4096
CUPY_PACKAGE = "cupy-cuda12x"


def require_cupy(feature: str) -> Any:
    """The ``cupy`` module, for ``feature`` (named in the error).

    Raises:
        UsageError: CuPy is not installed (or does not import): names what to install.
    """
    try:
        import cupy
    except ImportError as exc:
        raise UsageError(
            f"{feature} needs CuPy, which is not installed here ({exc}): pip install "
            f"{CUPY_PACKAGE} (or the client's 'gpu' extra), or use --shared-memory system/none"
        ) from None
    return cupy


class _Regions:
    """Named regions (one per tensor) with capacity that grows as needed."""

    def __init__(self, client: Any) -> None:
        self._client = client
        # Registration is a restricted API: the admin key of this user goes with each call.
        self._headers = admin_headers_for(client)
        self._prefix = f"{SHARED_MEMORY_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._capacity: dict[str, int] = {}
        self._handles: dict[str, Any] = {}

    def region_name(self, tensor: str) -> str:
        return f"{self._prefix}_{tensor.lower()}"

    def reserve(self, tensor: str, nbytes: int) -> str:
        """The region for ``tensor``, at least ``nbytes`` large; returns its registered name."""
        name = self.region_name(tensor)
        if self._capacity.get(tensor, 0) < nbytes:
            if tensor in self._handles:
                self._unregister(name)
                self._free(self._handles.pop(tensor))
            capacity = max(nbytes, 2 * self._capacity.get(tensor, 0))
            self._handles[tensor] = self._allocate(name, capacity)
            self._capacity[tensor] = capacity
        return name

    def close(self) -> None:
        for tensor, handle in list(self._handles.items()):
            # The server may be gone already: free our side regardless.
            with contextlib.suppress(Exception):
                self._unregister(self.region_name(tensor))
            self._free(handle)
        self._handles.clear()
        self._capacity.clear()

    def _allocate(self, name: str, nbytes: int) -> Any:
        raise NotImplementedError

    def _free(self, handle: Any) -> None:
        raise NotImplementedError

    def _unregister(self, name: str) -> None:
        raise NotImplementedError

    def write(self, tensor: str, array: Any) -> None:
        raise NotImplementedError

    def read(self, tensor: str, shape: tuple[int, ...], dtype: Any) -> Any:
        raise NotImplementedError


class SystemSharedMemory(_Regions):
    """POSIX shared-memory regions (``/dev/shm``) registered with the server."""

    def __init__(self, client: Any) -> None:
        with warnings.catch_warnings():
            # tritonclient's module imports setuptools' deprecated pkg_resources (to find its
            # C library): a warning on every run that the user can do nothing about.
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
            import tritonclient.utils.shared_memory as system_shm

        super().__init__(client)
        self._shm = system_shm

    def _allocate(self, name: str, nbytes: int) -> Any:
        handle = self._shm.create_shared_memory_region(name, f"/{name}", nbytes)
        try:
            give_region_to_server(name)
            self._client.register_system_shared_memory(
                name, f"/{name}", nbytes, headers=self._headers
            )
        except BaseException:  # the server cannot map it: nothing of it may stay behind
            self._free(handle)
            raise
        return handle

    def _free(self, handle: Any) -> None:
        self._shm.destroy_shared_memory_region(handle)

    def _unregister(self, name: str) -> None:
        self._client.unregister_system_shared_memory(name, headers=self._headers)

    def write(self, tensor: str, array: np.ndarray) -> None:
        self._shm.set_shared_memory_region(self._handles[tensor], [np.ascontiguousarray(array)])

    def read(self, tensor: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        view = self._shm.get_contents_as_numpy(self._handles[tensor], np.dtype(dtype), list(shape))
        return np.array(view, copy=True)  # the region is reused by the next request


class CudaSharedMemory(_Regions):
    """GPU regions shared with the server through CUDA IPC (allocated with CuPy).

    ``write`` takes NumPy (copied host -> device) or CuPy (device -> device) arrays; ``read``
    returns a CuPy copy on ``device`` (the region is reused by the next request).
    """

    def __init__(self, client: Any, device: int = 0) -> None:
        cupy = require_cupy("CUDA shared memory")
        super().__init__(client)
        self._cupy = cupy
        self.device = device

    def _allocate(self, name: str, nbytes: int) -> Any:
        cupy = self._cupy
        with cupy.cuda.Device(self.device):
            # A plain cudaMalloc (not CuPy's pool): an IPC handle covers a whole allocation.
            pointer = cupy.cuda.runtime.malloc(nbytes)
        try:
            with cupy.cuda.Device(self.device):
                raw_handle = cupy.cuda.runtime.ipcGetMemHandle(pointer)
            self._client.register_cuda_shared_memory(
                name,
                base64.b64encode(bytes(raw_handle)),
                self.device,
                nbytes,
                headers=self._headers,
            )
        except BaseException:  # the server cannot map it: nothing of it may stay behind
            self._free((pointer, None))
            raise
        memory = cupy.cuda.UnownedMemory(pointer, nbytes, owner=None, device_id=self.device)
        return pointer, cupy.cuda.MemoryPointer(memory, 0)

    def _free(self, handle: Any) -> None:
        with self._cupy.cuda.Device(self.device):
            self._cupy.cuda.runtime.free(handle[0])

    def _unregister(self, name: str) -> None:
        self._client.unregister_cuda_shared_memory(name, headers=self._headers)

    def _view(self, tensor: str, shape: tuple[int, ...], dtype: Any) -> Any:
        return self._cupy.ndarray(shape, dtype=dtype, memptr=self._handles[tensor][1])

    def write(self, tensor: str, array: Any) -> None:
        cupy = self._cupy
        with cupy.cuda.Device(self.device):
            view = self._view(tensor, tuple(array.shape), array.dtype)
            if isinstance(array, np.ndarray):
                view.set(np.ascontiguousarray(array))
            else:
                view[...] = array
            cupy.cuda.get_current_stream().synchronize()  # the server reads it next

    def read(self, tensor: str, shape: tuple[int, ...], dtype: Any) -> Any:
        with self._cupy.cuda.Device(self.device):
            return self._view(tensor, shape, dtype).copy()


def open_regions(kind: SharedMemoryKind, client: Any, *, device: int = 0) -> _Regions | None:
    """The shared-memory regions for ``kind`` on ``client`` (None for ``"none"``)."""
    if kind == "none":
        return None
    if kind == "system":
        return SystemSharedMemory(client)
    if kind == "cuda":
        return CudaSharedMemory(client, device)
    raise ValueError(f"shared memory must be one of {SHARED_MEMORY_KINDS}, got {kind!r}")


def usable_shared_memory(client: Any, *, device: int = 0) -> tuple[SharedMemoryKind, str]:
    """``(kind, reason)``: the fastest transport the server behind ``client`` can map.

    Each candidate is tried for real (a small region registered on the server, then
    unregistered and freed): ``cuda`` where CuPy sees a GPU here and the server opens the
    region's IPC handle (same host, same GPU visible to it), else ``system`` where the server
    opens a POSIX region (same host, or a container sharing its ``/dev/shm``), else ``none``
    (tensors in the requests: another host, or registration refused, e.g. without the
    server's admin key).
    """
    refused: list[str] = []
    for kind in ("cuda", "system"):
        if kind == "cuda" and not _cuda_usable(device):
            refused.append("cuda: no CUDA GPU for CuPy here")
            continue
        regions = open_regions(kind, client, device=device)
        assert regions is not None
        try:
            regions.reserve("probe", _PROBE_BYTES)
        except Exception as exc:
            refused.append(f"{kind}: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}")
            continue
        finally:
            regions.close()
        return kind, "the server maps a region registered from here"
    return "none", "; ".join(refused)


def _cuda_usable(device: int) -> bool:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > device
    except Exception:  # no CuPy, no driver, no GPU
        return False
