"""GPU utilization, memory and energy from NVML (``libnvidia-ml.so.1``, through ctypes).

No Python package needed: the library ships with the NVIDIA driver. On a machine without it
``NvmlDevice.open`` raises ``NvmlUnavailableError`` and callers record ``None``.

    with GpuSampler(0) as sampler:
        run_the_load()
    sampler.summary()  # {"gpu_util_pct_mean": ..., "energy_j": ..., "memory_used_mib_max": ...}
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field
from typing import Any

_NVML_SUCCESS = 0


class NvmlUnavailableError(RuntimeError):
    """NVML cannot be loaded or initialised here (no NVIDIA driver), or a call failed."""


class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class _Memory(ctypes.Structure):
    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


_lib: Any = None
_lib_lock = threading.Lock()


def _library() -> Any:
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL("libnvidia-ml.so.1")
            except OSError as exc:
                raise NvmlUnavailableError(f"libnvidia-ml.so.1 not found: {exc}") from None
            if lib.nvmlInit_v2() != _NVML_SUCCESS:
                raise NvmlUnavailableError("nvmlInit_v2 failed")
            _lib = lib
    return _lib


def _check(status: int, what: str) -> None:
    if status != _NVML_SUCCESS:
        raise NvmlUnavailableError(f"{what} failed with NVML status {status}")


class NvmlDevice:
    """One GPU by CUDA-visible index (NVML counts all GPUs: ``CUDA_VISIBLE_DEVICES`` is not
    applied; on the one-GPU machines here both orders agree)."""

    def __init__(self, handle: ctypes.c_void_p, index: int) -> None:
        self._handle = handle
        self.index = index

    @classmethod
    def open(cls, index: int = 0) -> NvmlDevice:
        lib = _library()
        handle = ctypes.c_void_p()
        _check(lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)), "get handle")
        return cls(handle, index)

    def name(self) -> str:
        buffer = ctypes.create_string_buffer(96)
        _check(_library().nvmlDeviceGetName(self._handle, buffer, 96), "nvmlDeviceGetName")
        return buffer.value.decode()

    def utilization_pct(self) -> tuple[int, int]:
        """``(gpu, memory)``: percent of the last sample period (1/6 s to 1 s) in which a kernel
        ran / device memory was read or written."""
        util = _Utilization()
        _check(
            _library().nvmlDeviceGetUtilizationRates(self._handle, ctypes.byref(util)),
            "nvmlDeviceGetUtilizationRates",
        )
        return int(util.gpu), int(util.memory)

    def memory_used_bytes(self) -> int:
        memory = _Memory()
        _check(
            _library().nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(memory)),
            "nvmlDeviceGetMemoryInfo",
        )
        return int(memory.used)

    def energy_mj(self) -> int:
        """Energy since the driver loaded, millijoules (Volta and newer)."""
        energy = ctypes.c_ulonglong()
        _check(
            _library().nvmlDeviceGetTotalEnergyConsumption(self._handle, ctypes.byref(energy)),
            "nvmlDeviceGetTotalEnergyConsumption",
        )
        return int(energy.value)

    def power_w(self) -> float:
        milliwatts = ctypes.c_uint()
        _check(
            _library().nvmlDeviceGetPowerUsage(self._handle, ctypes.byref(milliwatts)),
            "nvmlDeviceGetPowerUsage",
        )
        return milliwatts.value / 1e3


@dataclass
class GpuSampler:
    """Samples one GPU every ``period_s`` in a thread between ``start()`` and ``stop()``.

    ``summary()``: mean/max GPU utilization (%), max memory used (MiB), energy (J, from the
    driver's counter, exact over the window) and the window's length (s). Without NVML every
    figure is ``None``.
    """

    index: int = 0
    period_s: float = 0.1
    util_pct: list[int] = field(default_factory=list)
    memory_used: list[int] = field(default_factory=list)
    _device: NvmlDevice | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _energy_start_mj: int | None = None
    _energy_end_mj: int | None = None
    _t_start: float = 0.0
    _t_end: float = 0.0

    def start(self) -> GpuSampler:
        try:
            self._device = NvmlDevice.open(self.index)
            self._energy_start_mj = self._device.energy_mj()
        except NvmlUnavailableError:
            self._device = None
        self._t_start = time.perf_counter()
        if self._device is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> GpuSampler:
        self._t_end = time.perf_counter()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._device is not None:
            self._energy_end_mj = self._device.energy_mj()
        return self

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        assert self._device is not None
        while not self._stop.wait(self.period_s):
            try:
                self.util_pct.append(self._device.utilization_pct()[0])
                self.memory_used.append(self._device.memory_used_bytes())
            except NvmlUnavailableError:
                return

    def summary(self) -> dict[str, float | None]:
        energy = None
        if self._energy_start_mj is not None and self._energy_end_mj is not None:
            energy = (self._energy_end_mj - self._energy_start_mj) / 1e3
        return {
            "window_s": self._t_end - self._t_start,
            "gpu_util_pct_mean": sum(self.util_pct) / len(self.util_pct) if self.util_pct else None,
            "gpu_util_pct_max": max(self.util_pct) if self.util_pct else None,
            "memory_used_mib_max": max(self.memory_used) / 2**20 if self.memory_used else None,
            "energy_j": energy,
        }
