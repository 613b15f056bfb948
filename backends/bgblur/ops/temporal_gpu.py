"""GPU (CuPy + CUDA) twin of ``bgblur.ops.temporal``: kernels in ``bgblur/kernels/temporal.cu``."""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.kernels import blocks, check_grid, f32, get_kernel, i32, strides
from bgblur.ops.temporal import LUMA_BOX_RADIUS

_BLOCK = (32, 8, 1)


def smooth_probability(
    probability_n1hw: Any,
    state_1hw_f32: Any,
    *,
    start: bool,
    strength: float,
    jitter: float,
    motion: float,
    out: Any,
) -> Any:
    """``bgblur.ops.temporal.smooth_probability`` on CuPy arrays (checked by the caller).

    One launch on the current stream: one thread per pixel, the frames in order.
    """
    frames, _, h, w = probability_n1hw.shape
    if probability_n1hw.dtype not in (np.float16, np.float32):
        probability_n1hw = probability_n1hw.astype(np.float32)
    if out.size == 0:
        return out
    name = "temporal_smooth_f16" if probability_n1hw.dtype == np.float16 else "temporal_smooth_f32"
    keep = np.float32(1.0) - np.float32(strength)
    inv_range = np.float32(1.0) / (np.float32(motion) - np.float32(jitter))
    with probability_n1hw.device:
        grid = check_grid("smooth_probability", (blocks(w, _BLOCK[0]), blocks(h, _BLOCK[1]), 1))
        p_strides = strides(probability_n1hw)
        get_kernel("temporal", name)(
            grid,
            _BLOCK,
            (
                probability_n1hw,
                p_strides[0],
                p_strides[2],
                p_strides[3],
                state_1hw_f32,
                *strides(state_1hw_f32)[1:],
                out,
                strides(out)[0],
                *strides(out)[2:],
                i32(frames),
                i32(h),
                i32(w),
                i32(1 if start else 0),
                f32(keep),
                f32(strength),
                f32(jitter),
                f32(inv_range),
            ),
        )
    return out


def smooth_probability_motion(
    probability_n1hw: Any,
    state_1hw_f32: Any,
    frames_n3hw: Any,
    luma_1hw_f32: Any,
    *,
    start: bool,
    luma_start: bool,
    strength: float,
    jitter: float,
    motion: float,
    coefficients: tuple[np.float32, np.float32, np.float32, np.float32],
    still_grey: float,
    moving_grey: float,
    out: Any,
) -> Any:
    """``bgblur.ops.temporal.smooth_probability`` with frames (the motion-aware gate) on CuPy
    arrays (checked by the caller): ``[T, 1, h, w]`` probability, ``[T, 3, h, w]`` float16 or
    float32 frames, ``[1, h, w]`` float32 states, ``[T, 1, h, w]`` float32 ``out``.

    One launch on the current stream: one thread per pixel, the frames in order.
    """
    frames, _, h, w = probability_n1hw.shape
    if probability_n1hw.dtype not in (np.float16, np.float32):
        probability_n1hw = probability_n1hw.astype(np.float32)
    if out.size == 0:
        return out
    p_type = "f16" if probability_n1hw.dtype == np.float16 else "f32"
    x_type = "f16" if frames_n3hw.dtype == np.float16 else "f32"
    keep = np.float32(1.0) - np.float32(strength)
    inv_range = np.float32(1.0) / (np.float32(motion) - np.float32(jitter))
    inv_area = np.float32(1.0) / np.float32((2 * LUMA_BOX_RADIUS + 1) ** 2)
    inv_image_range = np.float32(1.0) / (np.float32(moving_grey) - np.float32(still_grey))
    a_r, a_g, a_b, b = coefficients
    with probability_n1hw.device:
        grid = check_grid(
            "smooth_probability_motion", (blocks(w, _BLOCK[0]), blocks(h, _BLOCK[1]), 1)
        )
        p_strides = strides(probability_n1hw)
        get_kernel("temporal", f"temporal_smooth_motion_{p_type}_{x_type}")(
            grid,
            _BLOCK,
            (
                probability_n1hw,
                p_strides[0],
                p_strides[2],
                p_strides[3],
                state_1hw_f32,
                *strides(state_1hw_f32)[1:],
                frames_n3hw,
                *strides(frames_n3hw),
                luma_1hw_f32,
                *strides(luma_1hw_f32)[1:],
                out,
                strides(out)[0],
                *strides(out)[2:],
                i32(frames),
                i32(h),
                i32(w),
                i32(1 if start else 0),
                i32(1 if luma_start else 0),
                f32(keep),
                f32(strength),
                f32(jitter),
                f32(inv_range),
                f32(a_r),
                f32(a_g),
                f32(a_b),
                f32(b),
                i32(LUMA_BOX_RADIUS),
                f32(inv_area),
                f32(keep * keep),
                f32(moving_grey),
                f32(inv_image_range),
            ),
        )
    return out
