"""bgblur.nvml: GPU utilization, memory and energy through NVML; absent NVML is reported, not
hidden."""

from __future__ import annotations

import time

import pytest

from bgblur.device import cuda_device_count
from bgblur.nvml import GpuSampler, NvmlDevice, NvmlUnavailableError


@pytest.mark.skipif(cuda_device_count() > 0, reason="this machine has a GPU and its driver")
def test_without_a_driver_open_raises_and_the_sampler_reports_none() -> None:
    with pytest.raises(NvmlUnavailableError, match="libnvidia-ml"):
        NvmlDevice.open(0)
    with GpuSampler(0, period_s=0.01) as sampler:
        time.sleep(0.05)
    summary = sampler.summary()
    assert summary["window_s"] >= 0.05
    assert {k for k, v in summary.items() if v is None} == {
        "gpu_util_pct_mean",
        "gpu_util_pct_max",
        "memory_used_mib_max",
        "energy_j",
    }


@pytest.mark.gpu
def test_gpu_readings_under_load() -> None:
    import cupy

    device = NvmlDevice.open(0)
    assert "NVIDIA" in device.name() or device.name()
    a = cupy.ones((4096, 4096), dtype=cupy.float32)
    with GpuSampler(0, period_s=0.05) as sampler:
        deadline = time.perf_counter() + 1.5
        while time.perf_counter() < deadline:
            for _ in range(20):
                a = a @ a / 4096
            cupy.cuda.Device().synchronize()
    summary = sampler.summary()
    assert summary["energy_j"] > 0  # an H100 draws >= 60 W idle: tens of joules in 1.5 s
    assert 0 <= summary["gpu_util_pct_mean"] <= 100 and summary["gpu_util_pct_max"] >= 50
    assert summary["memory_used_mib_max"] >= 64  # the 64 MiB matrix at least
    assert 0 < device.power_w() < 1000
