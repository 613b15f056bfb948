"""GPU (CuPy + CUDA) twin of ``bgblur.ops.color``: kernels in ``bgblur/kernels/color.cu``."""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.kernels import blocks, check_grid, get_kernel, i32, require_u8, strides

_BLOCK = (32, 8, 1)


def rgb_to_grey(frames_nhwc_u8: Any, *, out: Any = None) -> Any:
    """``cv2.cvtColor(COLOR_RGB2GRAY)`` of ``[B, H, W, 3]`` uint8 CuPy frames into ``out``.

    One launch (one thread per pixel, batch on ``blockIdx.z``), OpenCV's 15-bit fixed point:
    bit-exact with the CPU twin.
    """
    import cupy

    require_u8("rgb_to_grey", frames=frames_nhwc_u8)
    batch, h, w, channels = frames_nhwc_u8.shape
    if channels != 3:
        raise ValueError(f"rgb_to_grey needs [B, H, W, 3] frames, got {frames_nhwc_u8.shape}")
    with frames_nhwc_u8.device:
        if out is None:
            out = cupy.empty((batch, h, w), np.uint8)
        if out.size == 0:
            return out
        grid = check_grid("rgb_to_grey", (blocks(w, _BLOCK[0]), blocks(h, _BLOCK[1]), batch))
        get_kernel("color", "rgb_to_grey_u8")(
            grid,
            _BLOCK,
            (frames_nhwc_u8, out, i32(h), i32(w), *strides(frames_nhwc_u8), *strides(out)),
        )
    return out
