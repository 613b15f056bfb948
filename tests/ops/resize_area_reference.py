"""Slow NumPy reference of the GPU INTER_AREA arithmetic (``resize_area_normalize_nchw*``).

It reproduces, operation by operation, what ``cv2.resize(..., interpolation=cv2.INTER_AREA)``
computes on a uint8 image that shrinks on both axes (OpenCV 4.x ``imgproc/src/resize.cpp``) and
what the kernels in ``bgblur/kernels/resize.cu`` compute, so the three can be held to each other
bit for bit. The tests (tests/ops/test_resize_cpu.py and test_resize_gpu.py) import it.

OpenCV's arithmetic, per axis of size ``n`` shrunk to ``d`` with the double
``scale = 1. / ((double)d / n)`` (not ``n / d``: they differ in the last bit for some sizes):

* integer scales on BOTH axes (``|scale - round(scale)| < DBL_EPSILON``; e.g. 512 -> 256,
  1024 -> 256, equal sizes), "resizeAreaFast": the integer sum ``S`` of the
  ``ix * iy`` box, then ``(S + 2) >> 2`` for a 2x2 box (its SIMD path) and otherwise
  ``cvRound((float)S * (1.f / (ix * iy)))`` (float32, round half to even);
* any other scale, "resizeArea": output ``dx`` covers ``[dx * scale, dx * scale + scale)``;
  each source index it touches gets the float32 weight ``overlap / cellWidth`` (computed in
  double, ``cellWidth = min(scale, n - dx * scale)``, partial overlaps of at most 1e-3 dropped);
  per source row ``buf = sum_x S * alpha_x`` accumulated in float32 in increasing x, then
  ``acc = sum_y beta_y * buf_y`` in float32 in increasing y, then ``cvRound(acc)`` saturated to
  uint8. The weights are normalized per axis (each axis's weights sum to ~1), NOT by the area
  ``sx * sy`` of the box. float32, because it is what OpenCV does: the same sums in float64
  differ from cv2 by 1 LSB on ~3 values per million (those landing next to a .5), and the box
  formula ``sum(overlap_x * overlap_y * S) / (sx * sy)`` in float32 on ~1% of the values.

``resize_normalize_nchw_reference`` then applies the op's rule (area only when the image shrinks
on both axes, else cv2 INTER_LINEAR) and the float32 normalization ``v * scale + bias``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

DBL_EPSILON = float(np.finfo(np.float64).eps)

#: The (source, output) sizes the twins are held to each other on (tests/ops), one per branch of
#: the arithmetic above: shrinking on both axes with general ratios (resizeArea_), integer ratios
#: on both axes (resizeAreaFast_: 2x2 with integer rounding, 4x4 / 3x3 / 2x4 in float), an
#: integer ratio on one axis only (general path), borders with a short last cell, equal sizes.
SHRINK_CASES = [
    ((1080, 1920), (256, 256)),
    ((720, 1280), (256, 256)),  # x ratio 5 but y 2.8125: general path
    ((2160, 3840), (256, 256)),
    ((1081, 1921), (144, 256)),
    ((7, 13), (3, 5)),
    ((300, 451), (256, 256)),
    ((256, 256), (256, 256)),
    ((512, 512), (256, 256)),
    ((1024, 1024), (256, 256)),
    ((768, 768), (256, 256)),
    ((512, 1024), (256, 256)),
    ((1080, 1920), (1, 1)),
    ((999, 1000), (998, 3)),
]
#: Enlarged on at least one axis: "area" is INTER_LINEAR there.
ENLARGE_CASES = [((7, 13), (64, 64)), ((300, 451), (301, 7)), ((256, 256), (255, 257))]


def opencv_scale(src_size: int, dst_size: int) -> float:
    """OpenCV's source step per destination pixel: ``1. / ((double)dst_size / src_size)``."""
    return 1.0 / (dst_size / src_size)


def is_area_fast(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[bool, int, int]:
    """``(fast, iscale_y, iscale_x)``: OpenCV's test for its integer-ratio INTER_AREA path."""
    scale_y = opencv_scale(src_hw[0], out_hw[0])
    scale_x = opencv_scale(src_hw[1], out_hw[1])
    iy, ix = round(scale_y), round(scale_x)  # saturate_cast<int>: round half to even, as round()
    fast = abs(scale_x - ix) < DBL_EPSILON and abs(scale_y - iy) < DBL_EPSILON
    return fast, iy, ix


def area_taps(src_size: int, dst_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``computeResizeAreaTab`` of one axis as ``(index, weight)`` arrays ``[dst_size, k]``.

    Row ``d`` lists the source indices of output ``d`` in increasing order with their float32
    weights; rows shorter than ``k`` are padded with index 0 and weight 0 (adding ``0 * v`` to a
    float32 sum leaves it unchanged, so the padding does not alter the arithmetic).
    """
    scale = opencv_scale(src_size, dst_size)
    rows: list[list[tuple[int, np.float32]]] = []
    for d in range(dst_size):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src_size - f1)
        s1, s2 = math.ceil(f1), math.floor(f2)
        s2 = min(s2, src_size - 1)
        s1 = min(s1, s2)
        taps = []
        if s1 - f1 > 1e-3:
            taps.append((s1 - 1, np.float32((s1 - f1) / cell)))
        taps.extend((s, np.float32(1.0 / cell)) for s in range(s1, s2))
        if f2 - s2 > 1e-3:
            taps.append((s2, np.float32(min(min(f2 - s2, 1.0), cell) / cell)))
        rows.append(taps)
    k = max(len(t) for t in rows)
    index = np.zeros((dst_size, k), np.int64)
    weight = np.zeros((dst_size, k), np.float32)
    for d, taps in enumerate(rows):
        for j, (s, a) in enumerate(taps):
            index[d, j], weight[d, j] = s, a
    return index, weight


def resize_area_u8(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)`` of a ``[H, W, C]`` uint8
    image with ``H >= h`` and ``W >= w``, recomputed with OpenCV's exact arithmetic."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"resize_area_u8 needs a [H, W, C] uint8 image, got {image.shape}")
    src_h, src_w, channels = image.shape
    h, w = out_hw
    if not (src_h >= h >= 1 and src_w >= w >= 1):
        raise ValueError(f"resize_area_u8 only shrinks: {(src_h, src_w)} -> {tuple(out_hw)}")
    fast, iy, ix = is_area_fast((src_h, src_w), (h, w))
    if fast:
        boxes = image.astype(np.int64).reshape(h, iy, w, ix, channels).sum(axis=(1, 3))
        if ix == 2 and iy == 2:
            return ((boxes + 2) >> 2).astype(np.uint8)
        inv_area = np.float32(1.0) / np.float32(ix * iy)
        value = boxes.astype(np.float32) * inv_area
        return np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return np.clip(np.rint(resize_area_accumulate(image, out_hw)), 0, 255).astype(np.uint8)


def resize_area_accumulate(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The float32 sums of OpenCV's general INTER_AREA path, before rounding: ``[h, w, C]``."""
    h, w = out_hw
    src = image.astype(np.float32)
    x_index, x_weight = area_taps(image.shape[1], w)
    y_index, y_weight = area_taps(image.shape[0], h)
    # Horizontal pass per source row: buf = ((0 + S0 * a0) + S1 * a1) + ..., in float32.
    buf = np.zeros((image.shape[0], w, image.shape[2]), np.float32)
    for j in range(x_index.shape[1]):
        buf = buf + src[:, x_index[:, j]] * x_weight[None, :, j, None]
    # Vertical pass: acc = ((0 + beta0 * buf0) + beta1 * buf1) + ..., in float32.
    acc = np.zeros((h, w, image.shape[2]), np.float32)
    for j in range(y_index.shape[1]):
        acc = acc + y_weight[:, j, None, None] * buf[y_index[:, j]]
    return acc


def area_applies(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """The op's rule: "area" resizes with INTER_AREA only when no axis is enlarged."""
    return src_hw[0] >= out_hw[0] and src_hw[1] >= out_hw[1]


def resize_normalize_nchw_reference(
    frames: np.ndarray,
    out_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    interpolation: str = "area",
    out_dtype: Any = np.float32,
) -> np.ndarray:
    """``resize_normalize_nchw`` of ``[B, H, W, 3]`` uint8 frames through this reference:
    ``resize_area_u8`` where the rule applies ("area"), else ``cv2.resize(INTER_LINEAR)``; then
    ``v * (1 / (255 * std)) + (-mean / std)`` in float32, NCHW, cast to ``out_dtype``."""
    h, w = out_hw
    std32 = np.asarray(std, np.float32)
    scale = (np.float32(1.0) / (np.float32(255.0) * std32)).reshape(3, 1, 1)
    bias = (-np.asarray(mean, np.float32) / std32).reshape(3, 1, 1)
    out = np.empty((frames.shape[0], 3, h, w), out_dtype)
    for b, frame in enumerate(frames):
        frame = np.ascontiguousarray(frame)
        if interpolation == "area" and area_applies(frame.shape[:2], out_hw):
            resized = resize_area_u8(frame, out_hw)
        else:
            resized = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        out[b] = resized.transpose(2, 0, 1).astype(np.float32) * scale + bias
    return out
