"""GPU (CuPy + CUDA) twin of ``bgblur.ops.background``: kernels in ``bgblur/kernels/background.cu``.

``halo_free_blur`` in four launches on the current stream, all at the working resolution:
``halo_weights_*`` (the mask resized from the probability on the fly, grown, turned into the
weight; the premultiplied colours, the weight and the frame into one ``[B, h, w, 7]`` uint8 work
image), the two passes of the bit-exact u8 Gaussian (``gaussian_gpu.launch_separable``) over
those 7 channels, and ``halo_normalise``. Integer arithmetic as the CPU twin's, so the bytes
are the same. ``launch_halo_free`` takes caller-owned buffers (the fused postprocess keeps them
in its workspace) and an image of any size: ``halo_weights_*`` resizes it to the working size
on the fly with ``resize_linear_u8``'s arithmetic (the identity at the working size), so the
fused postprocess hands it the full frames and skips the separate resize launch (at batch 1
the launches, not the arithmetic, are the cost: each is ~10 us of host time).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.kernels import blocks, check_grid, f64, get_kernel, i32, require_u8, strides
from bgblur.ops.background import GROW_PX, MIN_WEIGHT, WEIGHT_HI, WEIGHT_LO, check_weight_args

_BLOCK = (32, 8, 1)
WORK_CHANNELS = 7  # P_r, P_g, P_b, weight, frame_r, frame_g, frame_b


def halo_free_blur(
    small_nhwc_u8: Any,
    probability_n1hw: Any,
    ksize: int,
    sigma: float,
    *,
    grow_px: int = GROW_PX,
    weight_lo: int = WEIGHT_LO,
    weight_hi: int = WEIGHT_HI,
    min_weight: int = MIN_WEIGHT,
    out: Any = None,
) -> Any:
    """``bgblur.ops.background.halo_free_blur`` of CuPy arrays (same arguments, same bytes)."""
    import cupy

    from bgblur.ops import gaussian_gpu

    require_u8("halo_free_blur", small=small_nhwc_u8)
    ksize, sigma = gaussian_gpu.check_kernel(ksize, sigma)
    check_weight_args(grow_px, weight_lo, weight_hi, min_weight)
    batch, h, w, _ = small_nhwc_u8.shape
    with small_nhwc_u8.device:
        if out is None:
            out = cupy.empty((batch, h, w, 3), np.uint8)
        if out.size == 0:
            return out
        work = cupy.empty((batch, h, w, WORK_CHANNELS), np.uint8)
        launch_halo_free(
            small_nhwc_u8,
            probability_n1hw,
            gaussian_gpu.gaussian_taps(ksize, sigma),
            ksize,
            work=work,
            work_blurred=cupy.empty_like(work),
            work_u16=cupy.empty(work.shape, np.uint16),
            out=out,
            grow_px=grow_px,
            weight_lo=weight_lo,
            weight_hi=weight_hi,
            min_weight=min_weight,
        )
    return out


def launch_halo_free(
    image_nhwc_u8: Any,
    probability_n1hw: Any,
    taps: Any,
    ksize: int,
    *,
    work: Any,
    work_blurred: Any,
    work_u16: Any,
    out: Any,
    grow_px: int = GROW_PX,
    weight_lo: int = WEIGHT_LO,
    weight_hi: int = WEIGHT_HI,
    min_weight: int = MIN_WEIGHT,
) -> None:
    """The four launches of ``halo_free_blur`` into caller-owned buffers, on the current stream.

    Args:
        image_nhwc_u8: ``[B, H, W, 3]`` uint8 frames, resized bilinearly to the working size
            ``(h, w)`` of ``out`` (``resize_linear_nhwc``'s bytes; as they are at that size).
        probability_n1hw: ``[B, 1, ph, pw]`` float16 or float32 probability (other float
            dtypes are converted to float32 first).
        taps: ``gaussian_gpu.gaussian_taps(ksize, sigma)``.
        work, work_blurred: ``[B, h, w, 7]`` uint8 scratch; ``work_u16`` the same in uint16
            (contiguous).
        out: ``[B, h, w, 3]`` uint8 result (strided views allowed).
    """
    from bgblur.ops import gaussian_gpu

    probability = probability_n1hw
    if probability.dtype not in (np.float16, np.float32):
        probability = probability.astype(np.float32)
    batch, src_h, src_w, _ = image_nhwc_u8.shape
    h, w = int(out.shape[1]), int(out.shape[2])
    ph, pw = int(probability.shape[2]), int(probability.shape[3])
    if min(ph, pw) < 1:
        raise ValueError(f"cannot resize an empty {(ph, pw)} probability to {(h, w)}")
    p_strides = strides(probability)
    grid = check_grid("halo_free_blur", (blocks(w, _BLOCK[0]), blocks(h, _BLOCK[1]), batch))
    name = "halo_weights_f16" if probability.dtype == np.float16 else "halo_weights_f32"
    get_kernel("background", name)(
        grid,
        _BLOCK,
        (
            probability,
            p_strides[0],
            p_strides[2],
            p_strides[3],
            i32(ph),
            i32(pw),
            f64(1.0 / (w / pw)),
            f64(1.0 / (h / ph)),
            image_nhwc_u8,
            i32(src_h),
            i32(src_w),
            f64(1.0 / (w / src_w)),
            f64(1.0 / (h / src_h)),
            *strides(image_nhwc_u8),
            work,
            *strides(work),
            i32(h),
            i32(w),
            i32(grow_px),
            i32(weight_lo),
            i32(weight_hi),
        ),
    )
    gaussian_gpu.launch_separable(work, work_blurred, work_u16, taps, ksize)
    get_kernel("background", "halo_normalise")(
        grid,
        _BLOCK,
        (
            work_blurred,
            *strides(work_blurred),
            out,
            *strides(out),
            i32(h),
            i32(w),
            i32(min_weight),
        ),
    )
