"""GPU (CuPy + CUDA) twins of ``bgblur.ops.resize``: kernels in ``bgblur/kernels/resize.cu``.

OpenCV conventions, reproduced bit for bit on uint8 (see the comment at the top of resize.cu):
INTER_LINEAR with half-pixel centres, clamped borders and OpenCV's 11-bit fixed-point weights;
INTER_NEAREST with ``src = min(floor(dst * scale), src_size - 1)`` where ``scale`` is the double
``1 / (dst_size / src_size)`` (the integer ``dst * src_size // dst_size`` differs from it for
some sizes, e.g. 1080 -> 999 rows); INTER_AREA of a shrinking image (the preprocessing's
``interpolation="area"``) with OpenCV's float32 arithmetic, integer-ratio fast path included
(its NumPy twin, for the tests: ``tests/ops/resize_area_reference.py``). One launch per call, one
thread per output pixel, batch on ``blockIdx.z``; inputs and ``out`` may be strided views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bgblur.kernels import blocks, check_grid, f32, f64, get_kernel, i32, require_u8, strides
from bgblur.ops.resize import check_normalize_interpolation

_BLOCK = (32, 8, 1)

# resize_normalize_nchw's interpolation (NORMALIZE_INTERPOLATIONS) -> kernel family in resize.cu.
# The families share one argument list (the area kernels fall back to the linear arithmetic for an
# image enlarged on an axis), so the launches differ only by kernel name.
_NORMALIZE_KERNELS = {"linear": "resize_normalize_nchw", "area": "resize_area_normalize_nchw"}


def _normalize_kernel(interpolation: str, out_dtype: Any, *, table: bool) -> str:
    """Name of the resize + normalize kernel for ``interpolation`` writing ``out_dtype``."""
    if out_dtype == np.float32:
        suffix = "f32"
    elif out_dtype == np.float16:
        suffix = "f16"
    else:
        raise ValueError(f"resize_normalize_nchw writes float16 or float32, got {out_dtype}")
    return f"{_NORMALIZE_KERNELS[interpolation]}{'_table' if table else ''}_{suffix}"


def _scale(src_size: int, dst_size: int) -> np.float64:
    """OpenCV's source step per destination pixel: ``1. / ((double)dst_size / src_size)``."""
    return f64(1.0 / (dst_size / src_size))


def _check_sizes(op: str, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    if min(out_hw) < 0:
        raise ValueError(f"{op}: output size must be non-negative, got {tuple(out_hw)}")
    if min(src_hw) <= 0 and min(out_hw) > 0:
        raise ValueError(f"{op}: cannot resize an empty {tuple(src_hw)} image to {tuple(out_hw)}")


def resize_normalize_nchw(
    frames_nhwc_u8: Any,
    out_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    out: Any = None,
    interpolation: str = "linear",
) -> Any:
    """Resize + normalise + NHWC -> NCHW of CuPy uint8 RGB frames, in one kernel.

    ``out`` is ``[B, 3, h, w]`` float16 or float32 (its dtype picks the kernel); ``None``
    allocates float16. ``interpolation``: ``"linear"`` (INTER_LINEAR) or ``"area"`` (INTER_AREA
    when the frames shrink on both axes, else INTER_LINEAR). The uint8 resize equals
    ``cv2.resize``'s and ``v * scale + bias`` is computed in float32 as the CPU twin does, so
    results match it exactly (then rounded to float16 for a float16 ``out``).
    """
    import cupy

    check_normalize_interpolation(interpolation)
    require_u8("resize_normalize_nchw", frames=frames_nhwc_u8)
    batch, src_h, src_w, channels = frames_nhwc_u8.shape
    if channels != 3:
        raise ValueError(
            f"resize_normalize_nchw needs [B, H, W, 3] frames, got {frames_nhwc_u8.shape}"
        )
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    h, w = (int(v) for v in out_hw)
    _check_sizes("resize_normalize_nchw", (src_h, src_w), (h, w))
    # Exactly the CPU twin's float32 constants.
    std32 = np.asarray(std, np.float32)
    scale = 1.0 / (255.0 * std32)
    bias = -np.asarray(mean, np.float32) / std32
    with frames_nhwc_u8.device:
        if out is None:
            out = cupy.empty((batch, 3, h, w), np.float16)
        name = _normalize_kernel(interpolation, out.dtype, table=False)
        if out.size == 0:
            return out
        grid = (blocks(w, _BLOCK[0]), blocks(h, _BLOCK[1]), batch)
        check_grid("resize_normalize_nchw", grid)
        get_kernel("resize", name)(
            grid,
            _BLOCK,
            (
                frames_nhwc_u8,
                out,
                i32(src_h),
                i32(src_w),
                i32(h),
                i32(w),
                _scale(src_w, w),
                _scale(src_h, h),
                *(f32(v) for v in scale),
                *(f32(v) for v in bias),
                *strides(frames_nhwc_u8),
                *strides(out),  # [B, C, h, w] order, as the kernel expects
            ),
        )
    return out


def resize_normalize_nchw_varshape(
    frames: Sequence[Any],
    out_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    out: Any = None,
    interpolation: str = "linear",
) -> Any:
    """``resize_normalize_nchw`` of frames of different sizes, in ONE launch.

    ``frames`` is a sequence of CuPy uint8 ``[n_i, H_i, W_i, 3]`` arrays (e.g. one per request;
    views and strides allowed) on one device; the output is ``[sum n_i, 3, h, w]`` float16 (or
    ``out``'s float16/float32), in order. A per-image table (source pointer, size, strides,
    scales; 64 bytes per image, uploaded once per call) tells each ``blockIdx.z`` where its image
    is; every image gets exactly what ``resize_normalize_nchw`` would give it alone (with
    ``interpolation="area"``, INTER_AREA or INTER_LINEAR chosen per image by the same rule).
    """
    import cupy

    check_normalize_interpolation(interpolation)
    if len(frames) == 0:
        raise ValueError("resize_normalize_nchw_varshape needs at least one frames array")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    h, w = (int(v) for v in out_hw)
    device = frames[0].device
    rows = []
    for i, batch in enumerate(frames):
        require_u8("resize_normalize_nchw_varshape", **{f"frames[{i}]": batch})
        if batch.ndim != 4 or batch.shape[3] != 3:
            raise ValueError(
                f"resize_normalize_nchw_varshape needs [n, H, W, 3] arrays, frames[{i}] is "
                f"{batch.shape}"
            )
        if batch.device != device:
            raise ValueError(f"frames[{i}] is on {batch.device}, frames[0] on {device}")
        n, src_h, src_w, _ = batch.shape
        _check_sizes("resize_normalize_nchw_varshape", (src_h, src_w), (h, w))
        s_b, s_y, s_x, s_c = (int(v) for v in strides(batch))
        scale_bits = [
            int(np.array(_scale(s, d)).view(np.int64)) for s, d in ((src_w, w), (src_h, h))
        ]
        for j in range(n):
            rows.append([batch.data.ptr + j * s_b, src_h, src_w, s_y, s_x, s_c, *scale_bits])
    total = len(rows)
    std32 = np.asarray(std, np.float32)
    scale = 1.0 / (255.0 * std32)
    bias = -np.asarray(mean, np.float32) / std32
    with device:
        if out is None:
            out = cupy.empty((total, 3, h, w), np.float16)
        if tuple(out.shape) != (total, 3, h, w):
            raise ValueError(f"out must be {(total, 3, h, w)}, got {tuple(out.shape)}")
        name = _normalize_kernel(interpolation, out.dtype, table=True)
        if out.size == 0:
            return out
        # Uploaded on the current stream, so the launch after it sees it (stream order).
        table = cupy.asarray(np.asarray(rows, dtype=np.int64).reshape(-1))
        grid = (blocks(w, _BLOCK[0]), blocks(h, _BLOCK[1]), total)
        check_grid("resize_normalize_nchw_varshape", grid)
        get_kernel("resize", name)(
            grid,
            _BLOCK,
            (
                table,
                out,
                i32(h),
                i32(w),
                *(f32(v) for v in scale),
                *(f32(v) for v in bias),
                *strides(out),
            ),
        )
    return out


def resize_linear_nhwc(frames_nhwc_u8: Any, out_hw: tuple[int, int], *, out: Any = None) -> Any:
    """``cv2.resize(INTER_LINEAR)`` of CuPy ``[B, H, W, C]`` uint8 frames into ``out``."""
    import cupy

    require_u8("resize_linear_nhwc", frames=frames_nhwc_u8)
    batch, src_h, src_w, channels = frames_nhwc_u8.shape
    h, w = (int(v) for v in out_hw)
    _check_sizes("resize_linear_nhwc", (src_h, src_w), (h, w))
    with frames_nhwc_u8.device:
        if out is None:
            out = cupy.empty((batch, h, w, channels), np.uint8)
        if out.size == 0:
            return out
        _launch_u8(
            "resize_linear_nhwc",
            "resize_linear_u8",
            frames_nhwc_u8,
            out,
            (batch, src_h, src_w, channels),
            (h, w),
            strides(frames_nhwc_u8),
            strides(out),
        )
    return out


def upscale_mask(
    mask_nhw_u8: Any, out_hw: tuple[int, int], *, interpolation: str = "nearest", out: Any = None
) -> Any:
    """``cv2.resize`` (INTER_NEAREST or INTER_LINEAR) of CuPy ``[B, h, w]`` uint8 masks."""
    import cupy

    if interpolation not in ("nearest", "linear"):
        raise ValueError(f"interpolation must be 'nearest' or 'linear', got {interpolation!r}")
    require_u8("upscale_mask", mask=mask_nhw_u8)
    batch, src_h, src_w = mask_nhw_u8.shape
    h, w = (int(v) for v in out_hw)
    _check_sizes("upscale_mask", (src_h, src_w), (h, w))
    with mask_nhw_u8.device:
        if out is None:
            out = cupy.empty((batch, h, w), np.uint8)
        if out.size == 0:
            return out
        zero = np.int64(0)  # channel stride of a single-channel image
        _launch_u8(
            "upscale_mask",
            "resize_nearest_u8" if interpolation == "nearest" else "resize_linear_u8",
            mask_nhw_u8,
            out,
            (batch, src_h, src_w, 1),
            (h, w),
            (*strides(mask_nhw_u8), zero),
            (*strides(out), zero),
        )
    return out


def _launch_u8(
    op: str,
    kernel: str,
    src: Any,
    out: Any,
    src_bhwc: tuple[int, int, int, int],
    out_hw: tuple[int, int],
    src_strides: tuple[np.int64, ...],
    out_strides: tuple[np.int64, ...],
) -> None:
    """Launch ``resize_linear_u8`` / ``resize_nearest_u8`` (same argument list) on the stream."""
    batch, src_h, src_w, channels = src_bhwc
    h, w = out_hw
    grid = check_grid(op, (blocks(w, _BLOCK[0]), blocks(h, _BLOCK[1]), batch))
    get_kernel("resize", kernel)(
        grid,
        _BLOCK,
        (
            src,
            out,
            i32(src_h),
            i32(src_w),
            i32(channels),
            i32(h),
            i32(w),
            _scale(src_w, w),
            _scale(src_h, h),
            *src_strides,
            *out_strides,
        ),
    )
