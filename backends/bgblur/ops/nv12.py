"""NV12 (YUV 4:2:0, interleaved chroma: what NVDEC produces) -> RGB.

Layout: ``nv12_u8`` is ``[B, H * 3 // 2, W]`` uint8, the luma plane (``H`` rows) followed by
the interleaved ``U V U V ...`` chroma plane (``H / 2`` rows of ``W / 2`` pairs), each frame as
OpenCV's ``cv2.cvtColor(..., COLOR_YUV2RGB_NV12)`` takes it. ``H`` and ``W`` must be even.
Chroma is upsampled by replication (each 2x2 block of pixels shares one U/V pair), as OpenCV
does.

Arithmetic: OpenCV's 20-bit fixed point (``imgproc/src/color_yuv.simd.hpp``)::

    y = max(0, Y - y_offset) * CY
    R = sat((y + 2^19 + CVR * (V - 128)) >> 20)
    G = sat((y + 2^19 + CVG * (V - 128) + CUG * (U - 128)) >> 20)
    B = sat((y + 2^19 + CUB * (U - 128)) >> 20)

with OpenCV's own constants for BT.601 limited range (so that case is bit-exact with
``COLOR_YUV2RGB_NV12``) and constants derived from the matrix's Kr/Kb for BT.709 and for full
range. The GPU twin (``nv12_gpu``, kernel ``kernels/nv12.cu``) runs the same integer formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from bgblur.ops.dispatch import check_out, is_gpu_array

ColorMatrix = Literal["bt601", "bt709"]
COLOR_MATRICES: tuple[ColorMatrix, ...] = ("bt601", "bt709")
SHIFT = 20
# (Kr, Kb) of each matrix (ITU-R BT.601 and BT.709).
_KR_KB: dict[str, tuple[float, float]] = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


@dataclass(frozen=True)
class Nv12Coefficients:
    """Fixed-point (x 2^20) YUV -> RGB coefficients and the luma offset (16 or 0)."""

    y_offset: int
    cy: int
    cvr: int
    cvg: int
    cug: int
    cub: int


def nv12_coefficients(matrix: ColorMatrix = "bt601", full_range: bool = False) -> Nv12Coefficients:
    """The integer coefficients of ``matrix`` in limited (16-235/240) or full (0-255) range.

    BT.601 limited range returns OpenCV's constants (``ITUR_BT_601_*``), so that case matches
    ``cv2.COLOR_YUV2RGB_NV12`` bit for bit.
    """
    if matrix not in _KR_KB:
        raise ValueError(f"matrix must be one of {COLOR_MATRICES}, got {matrix!r}")
    if matrix == "bt601" and not full_range:
        return Nv12Coefficients(16, 1220542, 1673527, -852492, -409993, 2116026)
    kr, kb = _KR_KB[matrix]
    kg = 1.0 - kr - kb
    y_scale, c_scale = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    one = float(1 << SHIFT)

    def fixed(value: float) -> int:
        return round(value * one)

    return Nv12Coefficients(
        y_offset=0 if full_range else 16,
        cy=fixed(y_scale),
        cvr=fixed(2.0 * (1.0 - kr) * c_scale),
        cvg=fixed(-2.0 * kr * (1.0 - kr) / kg * c_scale),
        cug=fixed(-2.0 * kb * (1.0 - kb) / kg * c_scale),
        cub=fixed(2.0 * (1.0 - kb) * c_scale),
    )


def check_nv12_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(B, H, W)`` of an NV12 batch ``[B, H * 3 // 2, W]`` (ValueError when malformed)."""
    if len(shape) != 3:
        raise ValueError(f"NV12 frames must be [B, H * 3 / 2, W], got shape {list(shape)}")
    batch, rows, w = shape
    if rows % 3 or w % 2:
        raise ValueError(
            f"NV12 frames need an even H and W (rows = H * 3 / 2), got shape {list(shape)}"
        )
    return batch, rows // 3 * 2, w


def nv12_to_rgb(
    nv12_u8: Any,
    *,
    matrix: ColorMatrix = "bt601",
    full_range: bool = False,
    out: Any = None,
) -> Any:
    """RGB frames from NV12 frames.

    Args:
        nv12_u8: ``[B, H * 3 // 2, W]`` uint8 (NumPy on the CPU, CuPy on its GPU); any strides.
        matrix: ``"bt601"`` or ``"bt709"`` (from the stream's colour metadata).
        full_range: True for full-range (JPEG) YUV, False for limited (MPEG, 16-235).
        out: optional ``[B, H, W, 3]`` uint8 array on the same device to write into.

    Returns:
        ``[B, H, W, 3]`` uint8 RGB on the input's device.
    """
    batch, h, w = check_nv12_shape(tuple(nv12_u8.shape))
    if nv12_u8.dtype != np.uint8:
        raise ValueError(f"NV12 frames must be uint8, got {nv12_u8.dtype}")
    coefficients = nv12_coefficients(matrix, full_range)
    out = check_out(out, (batch, h, w, 3), np.uint8, nv12_u8)
    if is_gpu_array(nv12_u8):
        from bgblur.ops import nv12_gpu

        return nv12_gpu.nv12_to_rgb(nv12_u8, coefficients, out=out)
    if matrix == "bt601" and not full_range:
        for b in range(batch):
            out[b] = cv2.cvtColor(np.ascontiguousarray(nv12_u8[b]), cv2.COLOR_YUV2RGB_NV12)
        return out
    out[...] = nv12_to_rgb_fixed_point(nv12_u8, coefficients)
    return out


def nv12_to_rgb_fixed_point(nv12_u8: np.ndarray, c: Nv12Coefficients) -> np.ndarray:
    """The NumPy reference of the integer formula (any coefficients); ``[B, H, W, 3]`` uint8."""
    _, h, _w = check_nv12_shape(tuple(nv12_u8.shape))
    luma = nv12_u8[:, :h, :].astype(np.int32)
    chroma = nv12_u8[:, h:, :].astype(np.int32)
    u = np.repeat(np.repeat(chroma[:, :, 0::2] - 128, 2, axis=1), 2, axis=2)
    v = np.repeat(np.repeat(chroma[:, :, 1::2] - 128, 2, axis=1), 2, axis=2)
    y = np.maximum(luma - c.y_offset, 0) * c.cy + (1 << (SHIFT - 1))
    rgb = np.stack(
        [y + c.cvr * v, y + c.cvg * v + c.cug * u, y + c.cub * u], axis=-1
    )  # int32: |values| < 2^31 for every supported matrix and range
    return np.clip(rgb >> SHIFT, 0, 255).astype(np.uint8)


def nv12_to_rgb_float_reference(
    nv12_u8: np.ndarray, matrix: ColorMatrix = "bt601", full_range: bool = False
) -> np.ndarray:
    """Textbook float64 formula (Kr/Kb of ``matrix``), rounded: ``[B, H, W, 3]`` uint8.

    For tests: the fixed-point path stays within 1 LSB of it.
    """
    _, h, _ = check_nv12_shape(tuple(nv12_u8.shape))
    kr, kb = _KR_KB[matrix]
    kg = 1.0 - kr - kb
    luma = nv12_u8[:, :h, :].astype(np.float64)
    chroma = nv12_u8[:, h:, :].astype(np.float64)
    u = np.repeat(np.repeat(chroma[:, :, 0::2] - 128.0, 2, axis=1), 2, axis=2)
    v = np.repeat(np.repeat(chroma[:, :, 1::2] - 128.0, 2, axis=1), 2, axis=2)
    if full_range:
        y = luma
    else:
        y = np.maximum(luma - 16.0, 0.0) * 255.0 / 219.0
        u, v = u * 255.0 / 224.0, v * 255.0 / 224.0
    r = y + 2.0 * (1.0 - kr) * v
    g = y - 2.0 * kb * (1.0 - kb) / kg * u - 2.0 * kr * (1.0 - kr) / kg * v
    b = y + 2.0 * (1.0 - kb) * u
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def rgb_to_nv12(frames_nhwc_u8: np.ndarray) -> np.ndarray:
    """BT.601 limited-range NV12 ``[B, H * 3 // 2, W]`` of RGB frames (OpenCV's I420, repacked).

    A helper for tests and benchmarks (the encoders take RGB or YUV themselves).
    """
    batch, h, w, _ = frames_nhwc_u8.shape
    out = np.empty((batch, h * 3 // 2, w), np.uint8)
    for b in range(batch):
        i420 = cv2.cvtColor(np.ascontiguousarray(frames_nhwc_u8[b]), cv2.COLOR_RGB2YUV_I420)
        flat = i420.reshape(-1)
        quarter = h * w // 4
        out[b, :h] = i420[:h]
        out[b, h:, 0::2] = flat[h * w : h * w + quarter].reshape(h // 2, w // 2)
        out[b, h:, 1::2] = flat[h * w + quarter :].reshape(h // 2, w // 2)
    return out
