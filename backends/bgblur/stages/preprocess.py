"""Preprocess: frames -> network input (resize + normalize + NHWC->NCHW, one op)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bgblur.device import Device
from bgblur.models.registry import SegmentationModelSpec
from bgblur.ops import resize_normalize_nchw, resize_normalize_nchw_varshape
from bgblur.stages.nvtx import nvtx_range
from bgblur.stages.stream import StageStream

STAGE_INTERPOLATIONS = ("auto", "linear", "area")


def resolve_interpolation(choice: str, device: Device) -> str:
    """The downscale a preprocess stage runs: ``"linear"`` or ``"area"`` as asked; ``"auto"``
    (the default) is ``"area"`` on the GPU, where it gives steadier masks at a cost not
    measurable end to end, and ``"linear"`` on the CPU, where area costs milliseconds a frame
    (docs/architecture.md, "Model input: bilinear or area")."""
    if choice not in STAGE_INTERPOLATIONS:
        raise ValueError(
            f"resize_interpolation must be one of {', '.join(STAGE_INTERPOLATIONS)}, got {choice!r}"
        )
    if choice == "auto":
        return "area" if device.is_gpu else "linear"
    return choice


class Preprocess:
    """``[B, H, W, 3]`` uint8 RGB frames -> ``[B, 3, h, w]`` float16 network input.

    Args:
        spec: the network whose input size and normalization to produce.
        device: CPU (NumPy/OpenCV) or GPU (CuPy kernels on this stage's own stream).
        interpolation: ``"linear"`` (OpenCV INTER_LINEAR, CV-CUDA's sample), ``"area"``
            (INTER_AREA for frames that shrink on both axes: steadier masks, README "Model
            input"; ``bgblur.ops.resize_normalize_nchw``) or ``"auto"``: area on the GPU,
            linear on the CPU (``resolve_interpolation``). ``self.interpolation`` is the
            resolved one.
    """

    out_dtype = np.float16

    def __init__(
        self, spec: SegmentationModelSpec, device: Device, *, interpolation: str = "auto"
    ) -> None:
        self.spec = spec
        self.device = device
        self.interpolation = resolve_interpolation(interpolation, device)
        self.stream = StageStream(device)

    def warm_up(self) -> None:
        """Run tiny frames through the single-size and the variable-shape paths once (at model
        load), so that no request pays for first use: on the GPU the kernels' NVRTC compilation
        (or CuPy's disk cache) and the stream's first launches."""
        frames = [np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 9, 7, 3), np.uint8)]
        self.with_device_frames_varshape(frames[:1])
        self.with_device_frames_varshape(frames)

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
        out, frames = self.with_device_frames_varshape([frames_nhwc_u8])
        return out, frames[0]

    def with_device_frames_varshape(self, frames: Sequence[Any]) -> tuple[Any, list[Any]]:
        """``[n_i, H_i, W_i, 3]`` uint8 frame batches of any sizes -> ``(network input
        [sum n_i, 3, h, w] float16, the batches on this stage's device)``.

        One kernel launch for all of them (``resize_normalize_nchw_varshape``: a table of
        per-image pointers and sizes), so requests of different frame sizes batch together and
        equal-sized ones are not concatenated (copied) first.
        """
        spec = self.spec
        with self.stream.activate(), nvtx_range("preprocess.resize_normalize"):
            on_device = [self.stream.to_device(f) for f in frames]
            if len(on_device) == 1:
                out = resize_normalize_nchw(
                    on_device[0],
                    spec.input_hw,
                    spec.mean,
                    spec.std,
                    out_dtype=self.out_dtype,
                    interpolation=self.interpolation,
                )
            else:
                out = resize_normalize_nchw_varshape(
                    on_device,
                    spec.input_hw,
                    spec.mean,
                    spec.std,
                    out_dtype=self.out_dtype,
                    interpolation=self.interpolation,
                )
        self.stream.synchronize()
        return out, on_device
