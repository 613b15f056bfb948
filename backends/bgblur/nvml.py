"""GPU utilization, memory and energy from NVML, through ``pynvml`` (the ``nvidia-ml-py``
package: NVIDIA's bindings of ``libnvidia-ml.so.1``, the library the driver ships).

On a machine without the driver ``NvmlDevice.open`` raises ``NvmlUnavailableError`` and
``GpuSampler`` records ``None``.

    with GpuSampler(0) as sampler:
        run_the_load()
    sampler.summary()  # {"gpu_util_pct_mean": ..., "energy_j": ..., "memory_used_mib_max": ...}
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pynvml


class NvmlUnavailableError(RuntimeError):
    """NVML cannot be loaded or initialised here (no NVIDIA driver), or a call failed."""


_initialised = False
_init_lock = threading.Lock()


def _init() -> None:
    """``nvmlInit`` once per process; retried on the next call after a failure."""
    global _initialised
    with _init_lock:
        if not _initialised:
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                raise NvmlUnavailableError(
                    f"NVML (libnvidia-ml.so.1, from the NVIDIA driver) is unavailable: {exc}"
                ) from None
            _initialised = True


def _call(function: str, *args: Any) -> Any:
    """``pynvml.<function>(*args)``, its ``NVMLError`` raised as ``NvmlUnavailableError``."""
    try:
        return getattr(pynvml, function)(*args)
    except pynvml.NVMLError as exc:
        raise NvmlUnavailableError(f"{function} failed: {exc}") from None


class NvmlDevice:
    """One GPU by CUDA-visible index (NVML counts all GPUs: ``CUDA_VISIBLE_DEVICES`` is not
    applied; on the one-GPU machines here both orders agree)."""

    def __init__(self, handle: Any, index: int) -> None:
        self._handle = handle
        self.index = index

    @classmethod
    def open(cls, index: int = 0) -> NvmlDevice:
        _init()
        return cls(_call("nvmlDeviceGetHandleByIndex", index), index)

    def name(self) -> str:
        return str(_call("nvmlDeviceGetName", self._handle))

    def utilization_pct(self) -> tuple[int, int]:
        """``(gpu, memory)``: percent of the last sample period (1/6 s to 1 s) in which a kernel
        ran / device memory was read or written."""
        util = _call("nvmlDeviceGetUtilizationRates", self._handle)
        return int(util.gpu), int(util.memory)

    def memory_used_bytes(self) -> int:
        return int(_call("nvmlDeviceGetMemoryInfo", self._handle).used)

    def energy_mj(self) -> int:
        """Energy since the driver loaded, millijoules (Volta and newer)."""
        return int(_call("nvmlDeviceGetTotalEnergyConsumption", self._handle))

    def power_w(self) -> float:
        """Power draw, watts (NVML reports milliwatts)."""
        return int(_call("nvmlDeviceGetPowerUsage", self._handle)) / 1e3


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
