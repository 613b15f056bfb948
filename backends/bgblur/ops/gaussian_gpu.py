"""GPU (CuPy + CUDA) twin of ``bgblur.ops.gaussian``: kernels in ``bgblur/kernels/gaussian.cu``.

Separable, OpenCV's bit-exact 8-bit fixed-point GaussianBlur (taps of 8 fractional bits built as
``getGaussianKernel`` + error diffusion, BORDER_REFLECT_101, one rounding at the end), so the
result equals ``cv2.GaussianBlur`` exactly. Three launches on the current stream: the taps (one
block), the horizontal pass (u8 -> u16 rows) and the vertical pass (u16 -> u8), each staging its
input window in shared memory as float, each thread computing 8 outputs by walking the taps in
unrolled chunks of 8 (float sums of integers below 2^24: exact). The u16 intermediate
``[B, H, W, C]`` and the taps come from CuPy's memory pool (stream-ordered, returned to the pool
after the call).
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

_H_THREADS = 128
_H_PIXELS = 1024  # GAUSS_H_PIXELS in gaussian.cu: pixels of a row per block
_OUT = 8  # GAUSS_OUT: outputs per thread (and the tap chunk)
_V_BLOCK = (32, 8, 1)  # 32 elements (x * C + c) times 8 threads of _OUT rows each
_V_ROWS = _V_BLOCK[1] * _OUT
# Largest ksize served: the taps (4 bytes each) and the taps kernel's scratch (8 bytes per half)
# live in shared memory; 4095 keeps both far below its limit (a radius of 2047 pixels).
MAX_KSIZE = 4095


def gaussian_blur(frames_nhwc_u8: Any, ksize: int, sigma: float, *, out: Any = None) -> Any:
    """``cv2.GaussianBlur(frame, (ksize, ksize), sigma)`` of CuPy ``[B, H, W, C]`` uint8 frames."""
    import cupy

    require_u8("gaussian_blur", frames=frames_nhwc_u8)
    ksize = int(ksize)
    sigma = float(sigma)
    if ksize < 1 or ksize % 2 == 0 or not sigma > 0:
        raise ValueError(
            f"gaussian_blur needs an odd ksize >= 1 and sigma > 0, got {ksize}, {sigma}"
        )
    if ksize > MAX_KSIZE:
        raise ValueError(f"gaussian_blur on the GPU supports ksize <= {MAX_KSIZE}, got {ksize}")
    batch, h, w, channels = frames_nhwc_u8.shape
    with frames_nhwc_u8.device:
        if out is None:
            out = cupy.empty(frames_nhwc_u8.shape, np.uint8)
        if out.size == 0:
            return out
        # Pool allocations, stream-ordered on the current stream (see the module docstring).
        taps = cupy.empty(ksize, np.int32)
        tmp = cupy.empty((batch, h, w, channels), np.uint16)

        get_kernel("gaussian", "gaussian_taps")(
            (1,),
            (128,),
            (taps, i32(ksize), f64(-0.125 / (sigma * sigma))),
            shared_mem=8 * (ksize // 2),
        )

        kpad = blocks(ksize, _OUT) * _OUT  # taps zero-padded to whole chunks of _OUT
        taps_bytes = 4 * kpad
        npix = min(_H_PIXELS, w)
        h_shared = taps_bytes + 2 * (blocks(npix * channels, 2) * 2)
        h_tile = h_shared + 4 * (blocks(npix, _OUT) * _OUT + kpad + _OUT) * channels
        h_tiled = h_tile <= SHARED_MEMORY_LIMIT
        if h_shared > SHARED_MEMORY_LIMIT:  # only with very many channels and a huge kernel
            raise ValueError(
                f"gaussian_blur on the GPU: ksize {ksize} with {channels} channels needs more "
                "shared memory than a block has"
            )
        grid = check_grid("gaussian_blur", (blocks(w, _H_PIXELS), h, batch))
        get_kernel("gaussian", "gaussian_h_tiled" if h_tiled else "gaussian_h_direct")(
            grid,
            (_H_THREADS,),
            (
                frames_nhwc_u8,
                tmp,
                taps,
                i32(h),
                i32(w),
                i32(channels),
                i32(ksize),
                i32(kpad),
                *strides(frames_nhwc_u8),
            ),
            shared_mem=h_tile if h_tiled else h_shared,
        )

        v_tile = taps_bytes + 4 * (_V_ROWS + kpad + _OUT) * _V_BLOCK[0]
        v_tiled = v_tile <= SHARED_MEMORY_LIMIT
        grid = check_grid(
            "gaussian_blur", (blocks(w * channels, _V_BLOCK[0]), blocks(h, _V_ROWS), batch)
        )
        get_kernel("gaussian", "gaussian_v_tiled" if v_tiled else "gaussian_v_direct")(
            grid,
            _V_BLOCK,
            (tmp, out, taps, i32(h), i32(w), i32(channels), i32(ksize), i32(kpad), *strides(out)),
            shared_mem=v_tile if v_tiled else taps_bytes,
        )
    return out
