"""GPU (CuPy + CUDA) twin of ``bgblur.ops.bilateral``: kernels in ``bgblur/kernels/bilateral.cu``.

``cv2.ximgproc.jointBilateralFilter`` on uint8 (circular window of radius ``max(d // 2, 1)``,
BORDER_REFLECT_101, float weights and sums in OpenCV's order, final ``sum * (1 / wsum)`` rounded
half-even), so the result matches the CPU twin bit for bit except where OpenCV reads past its
255-entry colour table (a guide difference of exactly 255 inside a window).

Two launches on the current stream: the weight tables (colour LUT + spatial weights, computed on
the device into a small buffer from CuPy's memory pool) and the filter, one thread per two pixels,
whose mask/guide windows and tables are staged in shared memory (a global-memory variant serves
windows too large for it, diameter > 57). ``diameter`` 0 or 1 copies the mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.kernels import (
    SHARED_MEMORY_LIMIT,
    blocks,
    check_grid,
    f64,
    get_kernel,
    i32,
    require_u8,
    strides,
)

_BLOCK = (32, 8, 1)  # BIL_BX, BIL_BY in bilateral.cu
_ROWS = 2 * _BLOCK[1]  # BIL_TY: each thread filters rows y and y + 8
_COLOUR = 511  # colour weights of guide differences -255..255


def joint_bilateral_filter(
    mask_nhw_u8: Any,
    guide_nhw_u8: Any,
    diameter: int,
    sigma_color: float,
    sigma_space: float,
    *,
    out: Any = None,
) -> Any:
    """Joint bilateral filter of CuPy ``[B, H, W]`` uint8 masks guided by ``[B, H, W]`` grey."""
    import cupy

    require_u8("joint_bilateral_filter", mask=mask_nhw_u8, guide=guide_nhw_u8)
    if mask_nhw_u8.shape != guide_nhw_u8.shape:
        raise ValueError(
            f"mask and guide must have the same shape, got {mask_nhw_u8.shape} and "
            f"{guide_nhw_u8.shape}"
        )
    diameter = int(diameter)
    sigma_color = float(sigma_color)
    sigma_space = float(sigma_space)
    batch, h, w = mask_nhw_u8.shape
    with mask_nhw_u8.device:
        if out is None:
            out = cupy.empty((batch, h, w), np.uint8)
        if out.size == 0:
            return out
        if diameter <= 1:
            cupy.copyto(out, mask_nhw_u8)  # elementwise copy on the current stream
            return out
        r = max(diameter // 2, 1)
        d = 2 * r + 1
        n_tables = _COLOUR + d * d
        # Pool allocation, stream-ordered on the current stream; back to the pool after the call.
        tables = cupy.empty(n_tables, np.float32)
        get_kernel("bilateral", "bilateral_tables")(
            (blocks(n_tables, 256),),
            (256,),
            (
                tables,
                i32(r),
                f64(-0.5 / (sigma_color * sigma_color)),  # OpenCV's gaussColorCoeff
                f64(-0.5 / (sigma_space * sigma_space)),  # OpenCV's gaussSpaceCoeff
            ),
        )
        tiled_bytes = 4 * n_tables + 5 * (_BLOCK[0] + 2 * r) * (_ROWS + 2 * r)
        tiled = tiled_bytes <= SHARED_MEMORY_LIMIT
        grid = check_grid("joint_bilateral_filter", (blocks(w, _BLOCK[0]), blocks(h, _ROWS), batch))
        get_kernel("bilateral", "bilateral_tiled" if tiled else "bilateral_direct")(
            grid,
            _BLOCK,
            (
                mask_nhw_u8,
                guide_nhw_u8,
                out,
                tables,
                i32(h),
                i32(w),
                i32(r),
                *strides(mask_nhw_u8),
                *strides(guide_nhw_u8),
                *strides(out),
            ),
            shared_mem=tiled_bytes if tiled else 4 * _COLOUR,
        )
    return out
