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
    ksize, sigma = check_kernel(ksize, sigma)
    with frames_nhwc_u8.device:
        if out is None:
            out = cupy.empty(frames_nhwc_u8.shape, np.uint8)
        if out.size == 0:
            return out
        # Pool allocations, stream-ordered on the current stream (see the module docstring).
        taps = gaussian_taps(ksize, sigma)
        tmp = cupy.empty(frames_nhwc_u8.shape, np.uint16)
        launch_separable(frames_nhwc_u8, out, tmp, taps, ksize)
    return out


def check_kernel(ksize: int, sigma: float) -> tuple[int, float]:
    """``(ksize, sigma)`` as int/float after checking them (ValueError naming the problem)."""
    ksize = int(ksize)
    sigma = float(sigma)
    if ksize < 1 or ksize % 2 == 0 or not sigma > 0:
        raise ValueError(
            f"gaussian_blur needs an odd ksize >= 1 and sigma > 0, got {ksize}, {sigma}"
        )
    if ksize > MAX_KSIZE:
        raise ValueError(f"gaussian_blur on the GPU supports ksize <= {MAX_KSIZE}, got {ksize}")
    return ksize, sigma


def gaussian_taps(ksize: int, sigma: float, *, out: Any = None) -> Any:
    """OpenCV's fixed-point taps (``[ksize]`` int32, 8 fractional bits) on the current device
    and stream: one launch."""
    import cupy

    taps = cupy.empty(ksize, np.int32) if out is None else out
    get_kernel("gaussian", "gaussian_taps")(
        (1,),
        (128,),
        (taps, i32(ksize), f64(-0.125 / (sigma * sigma))),
        shared_mem=8 * (ksize // 2),
    )
    return taps


def launch_separable(src: Any, dst: Any, tmp_u16: Any, taps: Any, ksize: int) -> None:
    """The horizontal (``src`` u8 -> ``tmp_u16``) and vertical (``tmp_u16`` -> ``dst`` u8) passes
    on the current stream: two launches. ``src``/``dst`` are ``[B, H, W, C]`` uint8 (strided
    views allowed), ``tmp_u16`` a contiguous ``[B, H, W, C]`` uint16 scratch, ``taps`` from
    ``gaussian_taps``. Tiled (shared-memory window) kernels where the window fits, direct
    otherwise."""
    batch, h, w, channels = src.shape
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
        (src, tmp_u16, taps, i32(h), i32(w), i32(channels), i32(ksize), i32(kpad), *strides(src)),
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
        (tmp_u16, dst, taps, i32(h), i32(w), i32(channels), i32(ksize), i32(kpad), *strides(dst)),
        shared_mem=v_tile if v_tiled else taps_bytes,
    )
