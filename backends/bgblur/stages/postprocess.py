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
from bgblur.stages.nvtx import nvtx_range
from bgblur.stages.stream import StageStream


def postprocess_chain(
    frames_nhwc_u8: Any,
    probability_n1hw: Any,
    params: BlurParams,
    *,
    blur_working_hw: tuple[int, int] = (224, 224),
    mask_interpolation: str = "nearest",
    out: Any = None,
    mask_out: Any = None,
) -> tuple[Any, Any]:
    """The postprocess as a chain of ops, on the arrays' device (NumPy: OpenCV; CuPy: the GPU
    twins on the current stream, no host synchronisation).

    mask = ``probability_to_mask`` (x 255, or thresholded) -> ``upscale_mask`` to the frame
    size -> ``joint_bilateral_filter`` guided by ``rgb_to_grey(frame)`` (skipped for a diameter
    0 or 1); background = ``resize_linear_nhwc`` to ``blur_working_hw`` -> ``gaussian_blur`` ->
    ``resize_linear_nhwc`` back; result = ``composite(frame, background, mask)``.

    Args:
        frames_nhwc_u8: ``[B, H, W, 3]`` uint8 RGB frames.
        probability_n1hw: ``[B, 1, h, w]`` float foreground probability, same device.
        params: blur and refinement parameters (``BlurParams`` fields).
        blur_working_hw: ``(h, w)`` at which the background is blurred.
        mask_interpolation: ``"nearest"`` or ``"linear"`` upscale of the mask.
        out, mask_out: optional ``[B, H, W, 3]`` / ``[B, H, W]`` uint8 arrays to write into.

    Returns:
        ``(blurred [B, H, W, 3] uint8, mask [B, H, W] uint8)`` on the input's device.
    """
    frame_hw = tuple(frames_nhwc_u8.shape[1:3])
    refine = params.bilateral_diameter > 1
    with nvtx_range("postprocess.mask"):
        mask_low = probability_to_mask(
            probability_n1hw, soft=params.soft_mask, threshold=params.mask_threshold
        )
        mask = upscale_mask(
            mask_low, frame_hw, interpolation=mask_interpolation, out=None if refine else mask_out
        )
    if refine:
        with nvtx_range("postprocess.bilateral"):
            mask = joint_bilateral_filter(
                mask,
                rgb_to_grey(frames_nhwc_u8),
                params.bilateral_diameter,
                params.bilateral_sigma_color,
                params.bilateral_sigma_space,
                out=mask_out,
            )
    with nvtx_range("postprocess.background_blur"):
        small = resize_linear_nhwc(frames_nhwc_u8, blur_working_hw)
        small_blurred = gaussian_blur(small, params.blur_ksize, params.blur_sigma)
        background = resize_linear_nhwc(small_blurred, frame_hw)
    with nvtx_range("postprocess.composite"):
        return composite(frames_nhwc_u8, background, mask, out=out), mask


class Postprocess:
    """Frames + foreground probability -> background-blurred frames and the refined mask.

    Steps (CV-CUDA's segmentation sample), as ``postprocess_chain``: mask = probability x 255
    (or thresholded); upscale to the frame size (``mask_interpolation``); joint bilateral filter
    guided by the grey frame; background = frame resized to ``blur_working_hw``,
    Gaussian-blurred, resized back (bilinear); output = composite(frame, background, mask).

    On the GPU the whole chain runs by default as
    ``bgblur.stages.postprocess_fused.FusedPostprocess`` (four launches, bit-identical to
    ``postprocess_chain``); ``fused=False`` runs ``postprocess_chain``.

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
            from bgblur.stages.postprocess_fused import FusedPostprocess

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
        with self.stream.activate():
            frames = self.stream.to_device(frames_nhwc_u8)
            probability = self.stream.to_device(probability_n1hw)
            if self.fused is not None:
                with nvtx_range("postprocess.fused"):
                    blurred, mask = self.fused(frames, probability, params)
            else:
                blurred, mask = postprocess_chain(
                    frames,
                    probability,
                    params,
                    blur_working_hw=self.blur_working_hw,
                    mask_interpolation=self.mask_interpolation,
                )
        self.stream.synchronize()
        return blurred, mask
