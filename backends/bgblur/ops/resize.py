"""Resizes: model-input preprocessing, bilinear frame resize, mask upscale (OpenCV conventions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from bgblur.ops.dispatch import check_out, is_gpu_array

# Values of resize_normalize_nchw's ``interpolation``.
NORMALIZE_INTERPOLATIONS = ("linear", "area")


def check_normalize_interpolation(interpolation: str) -> None:
    """ValueError unless ``interpolation`` is one of ``NORMALIZE_INTERPOLATIONS``."""
    if interpolation not in NORMALIZE_INTERPOLATIONS:
        raise ValueError(f"interpolation must be 'linear' or 'area', got {interpolation!r}")


def resize_normalize_nchw(
    frames_nhwc_u8: Any,
    out_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    out_dtype: Any = np.float16,
    out: Any = None,
    interpolation: str = "linear",
) -> Any:
    """Resize, normalize and reformat frames for the network, in one pass.

    ``out[b, c] = (resize(frames[b])[..., c] / 255 - mean[c]) / std[c]``, computed in float32 as
    ``v * (1 / (255 * std[c])) + (-mean[c] / std[c])``, where ``resize`` is ``cv2.resize`` of the
    uint8 frame (a uint8 result) with:

    * ``interpolation="linear"`` (default): ``cv2.INTER_LINEAR`` (half-pixel centres, clamped
      borders);
    * ``interpolation="area"``: ``cv2.INTER_AREA`` when the frame shrinks on BOTH axes
      (``H >= h and W >= w``; equal sizes included), else (any axis enlarged) exactly the
      ``"linear"`` path. INTER_AREA averages every source pixel of the output pixel's box
      (weighted by its overlap), so large downscales (1080p/4K -> 256) alias less than
      INTER_LINEAR, which reads only 2x2 pixels.

    Args:
        frames_nhwc_u8: ``[B, H, W, 3]`` uint8 RGB frames, NumPy (CPU, OpenCV) or CuPy (GPU, one
            kernel launch on the current stream; the same uint8 resize as OpenCV's).
        out_hw: ``(h, w)`` of the network input.
        mean, std: per-channel (RGB) mean and std of the [0, 1]-scaled input.
        out_dtype: float16 or float32.
        out: optional ``[B, 3, h, w]`` array of ``out_dtype`` on the input's device to write into.
        interpolation: ``"linear"`` or ``"area"`` (see above); anything else is a ValueError.

    Returns:
        ``[B, 3, h, w]`` array of ``out_dtype`` on the input's device.
    """
    check_normalize_interpolation(interpolation)
    batch = frames_nhwc_u8.shape[0]
    h, w = out_hw
    out = check_out(out, (batch, 3, h, w), out_dtype, frames_nhwc_u8)
    if is_gpu_array(frames_nhwc_u8):
        from bgblur.ops import resize_gpu

        return resize_gpu.resize_normalize_nchw(
            frames_nhwc_u8, out_hw, mean, std, out=out, interpolation=interpolation
        )
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(3, 1, 1)
    bias = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(3, 1, 1)
    src_hw = tuple(frames_nhwc_u8.shape[1:3])
    area = interpolation == "area" and src_hw[0] >= h and src_hw[1] >= w
    flag = cv2.INTER_AREA if area else cv2.INTER_LINEAR
    for b in range(batch):
        resized = cv2.resize(frames_nhwc_u8[b], (w, h), interpolation=flag)
        chw = resized.transpose(2, 0, 1).astype(np.float32)
        out[b] = chw * scale + bias
    return out


def resize_normalize_nchw_varshape(
    frames: Sequence[Any],
    out_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    out_dtype: Any = np.float16,
    out: Any = None,
    interpolation: str = "linear",
) -> Any:
    """``resize_normalize_nchw`` of a batch whose frames differ in size.

    Every image gets exactly what ``resize_normalize_nchw`` would give it alone; with
    ``interpolation="area"`` the rule (INTER_AREA if the image shrinks on both axes, else
    INTER_LINEAR) is applied per image, so one batch may mix both.

    Args:
        frames: ``[n_i, H_i, W_i, 3]`` uint8 RGB arrays (NumPy, or CuPy on one GPU: then one
            kernel launch for all of them, through a per-image table of pointers and strides).
        out_hw, mean, std, out_dtype, out, interpolation: as ``resize_normalize_nchw``.

    Returns:
        ``[sum n_i, 3, h, w]`` array of ``out_dtype``, the images in order.
    """
    check_normalize_interpolation(interpolation)
    if len(frames) == 0:
        raise ValueError("resize_normalize_nchw_varshape needs at least one frames array")
    total = sum(int(f.shape[0]) for f in frames)
    h, w = out_hw
    out = check_out(out, (total, 3, h, w), out_dtype, frames[0])
    if is_gpu_array(frames[0]):
        from bgblur.ops import resize_gpu

        return resize_gpu.resize_normalize_nchw_varshape(
            frames, out_hw, mean, std, out=out, interpolation=interpolation
        )
    start = 0
    for batch in frames:
        stop = start + int(batch.shape[0])
        resize_normalize_nchw(
            batch,
            out_hw,
            mean,
            std,
            out_dtype=out_dtype,
            out=out[start:stop],
            interpolation=interpolation,
        )
        start = stop
    return out


def resize_linear_nhwc(frames_nhwc_u8: Any, out_hw: tuple[int, int], *, out: Any = None) -> Any:
    """Bilinear resize of uint8 frames, as ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``.

    Args:
        frames_nhwc_u8: ``[B, H, W, C]`` uint8 (NumPy or CuPy).
        out_hw: ``(h, w)`` of the result.
        out: optional ``[B, h, w, C]`` uint8 array to write into.

    Returns:
        ``[B, h, w, C]`` uint8 on the input's device.
    """
    batch, _, _, channels = frames_nhwc_u8.shape
    h, w = out_hw
    out = check_out(out, (batch, h, w, channels), np.uint8, frames_nhwc_u8)
    if is_gpu_array(frames_nhwc_u8):
        from bgblur.ops import resize_gpu

        return resize_gpu.resize_linear_nhwc(frames_nhwc_u8, out_hw, out=out)
    for b in range(batch):
        out[b] = cv2.resize(frames_nhwc_u8[b], (w, h), interpolation=cv2.INTER_LINEAR).reshape(
            h, w, channels
        )
    return out


def upscale_mask(
    mask_nhw_u8: Any, out_hw: tuple[int, int], *, interpolation: str = "nearest", out: Any = None
) -> Any:
    """Resize masks to the frame size, as ``cv2.resize`` with INTER_NEAREST or INTER_LINEAR.

    Args:
        mask_nhw_u8: ``[B, h, w]`` uint8 masks (NumPy or CuPy).
        out_hw: ``(H, W)`` of the frames.
        interpolation: ``"nearest"`` (CV-CUDA's sample) or ``"linear"``.
        out: optional ``[B, H, W]`` uint8 array to write into.

    Returns:
        ``[B, H, W]`` uint8 on the input's device.
    """
    if interpolation not in ("nearest", "linear"):
        raise ValueError(f"interpolation must be 'nearest' or 'linear', got {interpolation!r}")
    batch = mask_nhw_u8.shape[0]
    h, w = out_hw
    out = check_out(out, (batch, h, w), np.uint8, mask_nhw_u8)
    if is_gpu_array(mask_nhw_u8):
        from bgblur.ops import resize_gpu

        return resize_gpu.upscale_mask(mask_nhw_u8, out_hw, interpolation=interpolation, out=out)
    flag = cv2.INTER_NEAREST if interpolation == "nearest" else cv2.INTER_LINEAR
    for b in range(batch):
        out[b] = cv2.resize(mask_nhw_u8[b], (w, h), interpolation=flag)
    return out
