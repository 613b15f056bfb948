"""Colour conversion."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from bgblur.ops.dispatch import check_out, is_gpu_array


def rgb_to_grey(frames_nhwc_u8: Any, *, out: Any = None) -> Any:
    """Luma of RGB frames, as ``cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)`` (BT.601 weights).

    Args:
        frames_nhwc_u8: ``[B, H, W, 3]`` uint8 RGB (NumPy or CuPy).
        out: optional ``[B, H, W]`` uint8 array to write into.

    Returns:
        ``[B, H, W]`` uint8 on the input's device.
    """
    batch, h, w, _ = frames_nhwc_u8.shape
    out = check_out(out, (batch, h, w), np.uint8, frames_nhwc_u8)
    if is_gpu_array(frames_nhwc_u8):
        from bgblur.ops import color_gpu

        return color_gpu.rgb_to_grey(frames_nhwc_u8, out=out)
    for b in range(batch):
        out[b] = cv2.cvtColor(frames_nhwc_u8[b], cv2.COLOR_RGB2GRAY)
    return out
