"""The segmentation runtime interface."""

from __future__ import annotations

from typing import Any, Protocol

from bgblur.device import Device
from bgblur.models.registry import SegmentationModelSpec


class SegmentationRuntime(Protocol):
    """Runs a segmentation network on one device.

    ``__call__(inputs_nchw)``: ``[B, 3, h, w]`` float16/float32 (NumPy on the CPU; CuPy or torch
    on the GPU) -> ``[B, 1, h, w]`` float16 foreground probability on the same device (NumPy on
    the CPU, torch on the GPU), complete (the runtime's stream synchronized) when returned.
    """

    spec: SegmentationModelSpec
    device: Device
    name: str

    def __call__(self, inputs_nchw: Any) -> Any: ...
