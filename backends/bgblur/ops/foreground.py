"""How much of each frame the person covers: the mean of the final mask."""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.ops.dispatch import array_module


def foreground_share(mask_nhw_u8: Any) -> Any:
    """Per frame, ``mean(mask) / 255``: 0 for a frame with no person, 1 for one all person.

    The sum is exact (integers) and divided in float64, so NumPy and CuPy give the same
    float32; on the GPU a reduction on the current stream (no host synchronisation).

    Args:
        mask_nhw_u8: ``[B, H, W]`` uint8 masks (NumPy or CuPy), 255 = foreground.

    Returns:
        ``[B, 1]`` float32 on the input's device.
    """
    if mask_nhw_u8.ndim != 3:
        raise ValueError(f"foreground_share needs [B, H, W] masks, got {mask_nhw_u8.shape}")
    xp = array_module(mask_nhw_u8)
    batch, height, width = mask_nhw_u8.shape
    if height * width == 0:
        return xp.zeros((batch, 1), np.float32)
    total = xp.sum(mask_nhw_u8, axis=(1, 2), dtype=np.uint64)
    return (total.astype(np.float64) / (255.0 * height * width)).astype(np.float32)[:, None]
