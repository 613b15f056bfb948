"""Foreground probability -> uint8 mask."""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.ops.dispatch import array_module, check_out


def probability_to_mask(
    probability_n1hw: Any, *, soft: bool = True, threshold: float = 0.5, out: Any = None
) -> Any:
    """Turn a foreground probability into a uint8 mask.

    soft: ``round(clip(p, 0, 1) * 255)`` (CV-CUDA's sample keeps the probability x 255 as its
    mask); hard: ``255 where p >= threshold else 0``.

    Args:
        probability_n1hw: ``[B, 1, h, w]`` float16/float32 probabilities (NumPy or CuPy).
        soft: soft or hard mask.
        threshold: threshold of the hard mask.
        out: optional ``[B, h, w]`` uint8 array to write into.

    Returns:
        ``[B, h, w]`` uint8 on the input's device.
    """
    batch, channels, h, w = probability_n1hw.shape
    if channels != 1:
        raise ValueError(f"probability must have shape [B, 1, h, w], got {probability_n1hw.shape}")
    xp = array_module(probability_n1hw)
    out = check_out(out, (batch, h, w), np.uint8, probability_n1hw)
    p = probability_n1hw[:, 0].astype(xp.float32)
    if soft:
        out[...] = xp.rint(xp.clip(p, 0.0, 1.0) * 255.0)
    else:
        out[...] = xp.where(p >= threshold, 255, 0)
    return out
