"""Preprocess: frames -> network input (resize + normalize + NHWC->NCHW, one op)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.device import Device
from bgblur.models.registry import SegmentationModelSpec
from bgblur.ops import resize_normalize_nchw
from bgblur.stages.stream import StageStream


class Preprocess:
    """``[B, H, W, 3]`` uint8 RGB frames -> ``[B, 3, h, w]`` float16 network input.

    Args:
        spec: the network whose input size and normalization to produce.
        device: CPU (NumPy/OpenCV) or GPU (CuPy kernels on this stage's own stream).
    """

    out_dtype = np.float16

    def __init__(self, spec: SegmentationModelSpec, device: Device) -> None:
        self.spec = spec
        self.device = device
        self.stream = StageStream(device)

    def __call__(self, frames_nhwc_u8: Any) -> Any:
        """Frames (NumPy, or CuPy on the GPU) -> network input on this stage's device."""
        return self.with_device_frames(frames_nhwc_u8)[0]

    def with_device_frames(self, frames_nhwc_u8: Any) -> tuple[Any, Any]:
        """Frames -> ``(network input [B, 3, h, w] float16, frames [B, H, W, 3] uint8)``, both
        on this stage's device.

        The second item is the frames as this stage uploaded them (the input itself when it was
        already there): the ensemble hands it on to ``postprocess`` so that a host frame crosses
        PCIe once per request, not once per stage.
        """
        with self.stream.activate():
            frames = self.stream.to_device(frames_nhwc_u8)
            out = resize_normalize_nchw(
                frames, self.spec.input_hw, self.spec.mean, self.spec.std, out_dtype=self.out_dtype
            )
        self.stream.synchronize()
        return out, frames
