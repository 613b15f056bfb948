"""GPU (CuPy + CUDA) twin of ``bgblur.ops.nv12``; kernel ``nv12_to_rgb_u8`` in ``nv12.cu``."""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.kernels import blocks, check_grid, get_kernel, i32, require_u8, strides
from bgblur.ops.nv12 import Nv12Coefficients, check_nv12_shape

_BLOCK = (32, 8, 1)


def nv12_to_rgb(nv12_u8: Any, coefficients: Nv12Coefficients, *, out: Any = None) -> Any:
    """``[B, H * 3 // 2, W]`` uint8 NV12 (CuPy, any strides, e.g. NVDEC's pitched surface)
    -> ``[B, H, W, 3]`` uint8 RGB in ``out`` on the same GPU, on the current CuPy stream.

    One launch, one thread per 2x2 pixel block; integer arithmetic identical to the CPU twin.
    """
    import cupy

    require_u8("nv12_to_rgb", nv12=nv12_u8)
    batch, h, w = check_nv12_shape(tuple(nv12_u8.shape))
    with nv12_u8.device:
        if out is None:
            out = cupy.empty((batch, h, w, 3), np.uint8)
        if out.size == 0:
            return out
        grid = check_grid(
            "nv12_to_rgb", (blocks(w // 2, _BLOCK[0]), blocks(h // 2, _BLOCK[1]), batch)
        )
        c = coefficients
        get_kernel("nv12", "nv12_to_rgb_u8")(
            grid,
            _BLOCK,
            (
                nv12_u8,
                out,
                i32(h),
                i32(w),
                *strides(nv12_u8),
                *strides(out),
                *(i32(value) for value in (c.y_offset, c.cy, c.cvr, c.cvg, c.cug, c.cub)),
            ),
        )
    return out
