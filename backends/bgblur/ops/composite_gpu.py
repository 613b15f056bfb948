"""GPU (CuPy + CUDA) twin of ``bgblur.ops.composite``: kernel in ``bgblur/kernels/composite.cu``."""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.kernels import blocks, check_grid, get_kernel, i32, require_u8, strides

_BLOCK = (32, 8, 1)


def composite(
    foreground_nhwc_u8: Any, background_nhwc_u8: Any, mask_nhw_u8: Any, *, out: Any = None
) -> Any:
    """``(fg * m + bg * (255 - m) + 127) // 255`` of CuPy ``[B, H, W, C]`` uint8 frames.

    One launch (one thread per pixel, batch on ``blockIdx.z``); exact integer arithmetic, so
    identical to the CPU twin. Inputs and ``out`` may be strided views.
    """
    import cupy

    fg, bg, mask = foreground_nhwc_u8, background_nhwc_u8, mask_nhw_u8
    require_u8("composite", foreground=fg, background=bg, mask=mask)
    batch, h, w, channels = fg.shape
    with fg.device:
        if out is None:
            out = cupy.empty(fg.shape, np.uint8)
        if out.size == 0:
            return out
        grid = check_grid("composite", (blocks(w, _BLOCK[0]), blocks(h, _BLOCK[1]), batch))
        get_kernel("composite", "composite_u8")(
            grid,
            _BLOCK,
            (
                fg,
                bg,
                mask,
                out,
                i32(h),
                i32(w),
                i32(channels),
                *strides(fg),
                *strides(bg),
                *strides(mask),
                *strides(out),
            ),
        )
    return out
