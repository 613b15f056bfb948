"""Joint (cross) bilateral filter of a mask guided by the grey frame."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from bgblur.ops.dispatch import check_out, is_gpu_array


def joint_bilateral_filter(
    mask_nhw_u8: Any,
    guide_nhw_u8: Any,
    diameter: int,
    sigma_color: float,
    sigma_space: float,
    *,
    out: Any = None,
) -> Any:
    """Edge-aware refinement of a mask, as ``cv2.ximgproc.jointBilateralFilter``.

    ``out(p) = sum_q w(p, q) mask(q) / sum_q w(p, q)`` over a circular window of radius
    ``diameter // 2``, ``w = exp(-|q - p|^2 / (2 sigma_space^2)) *
    exp(-(guide(q) - guide(p))^2 / (2 sigma_color^2))``, BORDER_REFLECT_101, rounded to uint8.
    ``diameter`` 0 or 1 returns the mask unchanged (a copy).

    Args:
        mask_nhw_u8: ``[B, H, W]`` uint8 masks (NumPy or CuPy).
        guide_nhw_u8: ``[B, H, W]`` uint8 grey guide frames, same device.
        diameter: window diameter in pixels (>= 0).
        sigma_color: colour sigma in grey levels (> 0).
        sigma_space: spatial sigma in pixels (> 0).
        out: optional ``[B, H, W]`` uint8 array to write into.

    Returns:
        ``[B, H, W]`` uint8 on the input's device.
    """
    if mask_nhw_u8.shape != guide_nhw_u8.shape:
        raise ValueError(
            f"mask and guide must have the same shape, got {mask_nhw_u8.shape} and "
            f"{guide_nhw_u8.shape}"
        )
    if diameter < 0 or sigma_color <= 0 or sigma_space <= 0:
        raise ValueError(
            "joint_bilateral_filter needs diameter >= 0 and positive sigmas, got "
            f"diameter={diameter}, sigma_color={sigma_color}, sigma_space={sigma_space}"
        )
    out = check_out(out, tuple(mask_nhw_u8.shape), np.uint8, mask_nhw_u8)
    if is_gpu_array(mask_nhw_u8):
        from bgblur.ops import bilateral_gpu

        return bilateral_gpu.joint_bilateral_filter(
            mask_nhw_u8, guide_nhw_u8, diameter, sigma_color, sigma_space, out=out
        )
    if diameter <= 1:
        out[...] = mask_nhw_u8
        return out
    ximgproc = getattr(cv2, "ximgproc", None)
    for b in range(mask_nhw_u8.shape[0]):
        guide, mask = np.ascontiguousarray(guide_nhw_u8[b]), np.ascontiguousarray(mask_nhw_u8[b])
        if ximgproc is not None:
            out[b] = ximgproc.jointBilateralFilter(
                guide, mask, int(diameter), float(sigma_color), float(sigma_space)
            )
        else:
            out[b] = joint_bilateral_filter_numpy(mask, guide, diameter, sigma_color, sigma_space)
    return out


def joint_bilateral_filter_numpy(
    mask_hw_u8: np.ndarray,
    guide_hw_u8: np.ndarray,
    diameter: int,
    sigma_color: float,
    sigma_space: float,
) -> np.ndarray:
    """One frame of ``cv2.ximgproc.jointBilateralFilter`` (8-bit, one channel) in NumPy.

    Used where OpenCV is built without ximgproc (plain opencv-python); the tests hold it to the
    ximgproc result. Same arithmetic: radius ``max(diameter // 2, 1)``, window ``i^2 + j^2 <=
    radius^2``, BORDER_REFLECT_101, float32 weights, result rounded to nearest.
    """
    radius = max(int(diameter) // 2, 1)
    mask_padded = cv2.copyMakeBorder(
        mask_hw_u8, radius, radius, radius, radius, cv2.BORDER_REFLECT_101
    ).astype(np.float32)
    guide_padded = cv2.copyMakeBorder(
        guide_hw_u8, radius, radius, radius, radius, cv2.BORDER_REFLECT_101
    ).astype(np.int32)
    color_weight = np.exp(np.arange(256, dtype=np.float64) ** 2 * (-0.5 / sigma_color**2)).astype(
        np.float32
    )
    height, width = mask_hw_u8.shape
    centre = guide_hw_u8.astype(np.int32)
    total = np.zeros((height, width), np.float32)
    weights = np.zeros((height, width), np.float32)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx > radius * radius:
                continue
            space = np.float32(np.exp((dy * dy + dx * dx) * (-0.5 / sigma_space**2)))
            rows = slice(radius + dy, radius + dy + height)
            cols = slice(radius + dx, radius + dx + width)
            weight = space * color_weight[np.abs(guide_padded[rows, cols] - centre)]
            total += weight * mask_padded[rows, cols]
            weights += weight
    return np.clip(np.rint(total * (np.float32(1) / weights)), 0, 255).astype(np.uint8)
