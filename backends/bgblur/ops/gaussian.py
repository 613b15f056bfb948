"""Gaussian blur of frames."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from bgblur.ops.dispatch import check_out, is_gpu_array


def gaussian_blur(frames_nhwc_u8: Any, ksize: int, sigma: float, *, out: Any = None) -> Any:
    """Gaussian blur, as ``cv2.GaussianBlur(frame, (ksize, ksize), sigma)`` (BORDER_REFLECT_101).

    Args:
        frames_nhwc_u8: ``[B, H, W, C]`` uint8 (NumPy or CuPy).
        ksize: odd kernel size (>= 1).
        sigma: standard deviation in pixels (> 0).
        out: optional ``[B, H, W, C]`` uint8 array to write into.

    Returns:
        ``[B, H, W, C]`` uint8 on the input's device.
    """
    if ksize < 1 or ksize % 2 == 0 or sigma <= 0:
        raise ValueError(
            f"gaussian_blur needs an odd ksize >= 1 and sigma > 0, got {ksize}, {sigma}"
        )
    out = check_out(out, tuple(frames_nhwc_u8.shape), np.uint8, frames_nhwc_u8)
    if is_gpu_array(frames_nhwc_u8):
        from bgblur.ops import gaussian_gpu

        return gaussian_gpu.gaussian_blur(frames_nhwc_u8, ksize, sigma, out=out)
    for b in range(frames_nhwc_u8.shape[0]):
        out[b] = cv2.GaussianBlur(frames_nhwc_u8[b], (ksize, ksize), sigma).reshape(out.shape[1:])
    return out
