"""Postprocess: probability -> refined full-size mask -> blurred background -> composite."""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.device import Device
from bgblur.ops import (
    composite,
    gaussian_blur,
    joint_bilateral_filter,
    probability_to_mask,
    resize_linear_nhwc,
    rgb_to_grey,
    upscale_mask,
)
from bgblur.parameters import BlurParams
from bgblur.stages.stream import StageStream


class Postprocess:
    """Frames + foreground probability -> background-blurred frames and the refined mask.

    Steps (CV-CUDA's segmentation sample): mask = probability x 255 (or thresholded); upscale
    to the frame size (``mask_interpolation``); joint bilateral filter guided by the grey frame;
    background = frame resized to ``blur_working_hw``, Gaussian-blurred, resized back
    (bilinear); output = composite(frame, background, mask).

    On the GPU the whole chain runs by default as ``bgblur.ops.fused_gpu.FusedPostprocess``
    (four launches, bit-identical to the per-op chain); ``fused=False`` keeps the per-op chain.

    Args:
        device: CPU (OpenCV) or GPU (CuPy kernels on this stage's own stream).
        blur_working_hw: ``(h, w)`` at which the background is blurred (CV-CUDA: 224x224).
        mask_interpolation: ``"nearest"`` (CV-CUDA) or ``"linear"``.
        fused: on the GPU, run the fused kernels (default) or the per-op chain; ignored on the
            CPU.
    """

    def __init__(
        self,
        device: Device,
        *,
        blur_working_hw: tuple[int, int] = (224, 224),
        mask_interpolation: str = "nearest",
        fused: bool = True,
    ) -> None:
        if mask_interpolation not in ("nearest", "linear"):
            raise ValueError(
                f"mask_interpolation must be nearest or linear, got {mask_interpolation!r}"
            )
        if min(blur_working_hw) < 1:
            raise ValueError(f"blur_working_hw must be positive, got {blur_working_hw}")
        self.device = device
        self.blur_working_hw = blur_working_hw
        self.mask_interpolation = mask_interpolation
        self.stream = StageStream(device)
        self.fused = None
        if device.is_gpu and fused:
            from bgblur.ops.fused_gpu import FusedPostprocess

            self.fused = FusedPostprocess(blur_working_hw, mask_interpolation)

    def warm_up(self) -> None:
        """Run one tiny frame through the whole chain once (at model load), so that no request
        pays for first use: on the GPU the kernels' NVRTC compilation (or CuPy's disk cache)."""
        frames = np.zeros((1, 32, 32, 3), np.uint8)
        probability = np.zeros((1, 1, 16, 16), np.float16)
        self(frames, probability, BlurParams())

    def __call__(
        self, frames_nhwc_u8: Any, probability_n1hw: Any, params: BlurParams
    ) -> tuple[Any, Any]:
        """Returns ``(blurred [B, H, W, 3] uint8, mask [B, H, W] uint8)`` on this device.

        Args:
            frames_nhwc_u8: ``[B, H, W, 3]`` uint8 RGB frames.
            probability_n1hw: ``[B, 1, h, w]`` float foreground probability.
            params: blur and refinement parameters.
        """
        if frames_nhwc_u8.shape[0] != probability_n1hw.shape[0]:
            raise ValueError(
                f"frames and probability batch sizes differ: {frames_nhwc_u8.shape[0]} vs "
                f"{probability_n1hw.shape[0]}"
            )
        frame_hw = tuple(frames_nhwc_u8.shape[1:3])
        with self.stream.activate():
            frames = self.stream.to_device(frames_nhwc_u8)
            probability = self.stream.to_device(probability_n1hw)
            if self.fused is not None:
                blurred, mask = self.fused(frames, probability, params)
                self.stream.synchronize()
                return blurred, mask
            mask_low = probability_to_mask(
                probability, soft=params.soft_mask, threshold=params.mask_threshold
            )
            mask = upscale_mask(mask_low, frame_hw, interpolation=self.mask_interpolation)
            if params.bilateral_diameter > 1:
                mask = joint_bilateral_filter(
                    mask,
                    rgb_to_grey(frames),
                    params.bilateral_diameter,
                    params.bilateral_sigma_color,
                    params.bilateral_sigma_space,
                )
            small = resize_linear_nhwc(frames, self.blur_working_hw)
            small_blurred = gaussian_blur(small, params.blur_ksize, params.blur_sigma)
            background = resize_linear_nhwc(small_blurred, frame_hw)
            blurred = composite(frames, background, mask)
        self.stream.synchronize()
        return blurred, mask
