"""Choose the runtime for a network on a device."""

from __future__ import annotations

from pathlib import Path

from bgblur.device import Device
from bgblur.models.registry import SegmentationModelSpec
from bgblur.runtimes.base import SegmentationRuntime


def build_runtime(
    spec: SegmentationModelSpec, device: Device, *, cache_dir: Path | None = None
) -> SegmentationRuntime:
    """The best runtime available for ``spec`` on ``device``.

    Today: PyTorch (CUDA graphs on the GPU, eager on the CPU). A TensorRT runtime for this
    embedded server is tracked separately; the official Triton container serves a TensorRT plan
    directly (``tensorrt_plan`` platform).
    """
    from bgblur.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(spec, device, cache_dir=cache_dir)
