"""GPU (CuPy + CUDA) twin of ``bgblur.ops.temporal``: kernels in ``bgblur/kernels/temporal.cu``."""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.kernels import blocks, check_grid, f32, get_kernel, i32, strides

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
