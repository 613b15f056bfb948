"""Fused GPU postprocess: the whole of ``bgblur.stages.postprocess`` in four launches.

The per-op chain (``postprocess_chain``: ``probability_to_mask`` -> ``upscale_mask`` ->
``rgb_to_grey`` -> ``joint_bilateral_filter`` -> ``resize_linear_nhwc`` down -> ``gaussian_blur``
-> ``resize_linear_nhwc`` up -> ``composite``) runs 10 to 15 kernels (the probability conversion
alone is several CuPy elementwise kernels) and moves every full-resolution intermediate (mask,
refined mask, grey, background) through memory. Here, per call, on the current stream:

1. ``resize_linear_u8`` (``resize.cu``): frames -> small working image ``[B, h, w, 3]``;
2. ``gaussian_h_*`` and 3. ``gaussian_v_*`` (``gaussian.cu``): the small image blurred (OpenCV's
   bit-exact fixed-point Gaussian); with ``halo_free`` (the default) instead of 1-3
   ``halo_weights_*`` (which does the resize of 1. itself), the two Gaussian passes over 7
   channels and ``halo_normalise`` (``background.cu``, ``bgblur.ops.background_gpu``): four
   launches at the working size, one more than without;
4. ``fused_post_*`` (``fused.cu``): per 32x16 tile of the frame, the mask samples are computed on
   the fly from the low-resolution probability (x255 or threshold, then nearest/linear upscale),
   the grey guide from the RGB tile, the joint bilateral refinement from both tiles in shared
   memory; the background is the bilinear upscale of the small blurred image, sampled in the same
   thread; the composite is written as BLURRED and the refined mask as MASK.

A replacement background needs no blur: ``background="color"`` passes a 1x1 image of the colour
as the small image (its bilinear upscale is that colour), ``background="image"`` the image
cover-fitted to the frame size (``cover_resize_nhwc``; bilinear sampling at scale 1 is the
identity), so the fused kernel is the same for every background.

Full-resolution traffic: frames read once, BLURRED and MASK written once. Every step uses the
same arithmetic as the per-op kernels, so both outputs are bit-identical to the unfused chain
(and so to OpenCV). The weight tables (bilateral colour/spatial, Gaussian taps) are computed on
the device once per parameter set and cached; the small buffers live in a workspace keyed by
``(device, batch)``; in steady state a call allocates only its two outputs (from CuPy's
stream-ordered pool, no cudaMalloc) and does not synchronise the host. Bilateral windows too
large for the fused kernel's shared memory (diameter > 41) fall back to ``postprocess_chain``.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from bgblur.kernels import (
    SHARED_MEMORY_LIMIT,
    blocks,
    check_grid,
    f32,
    f64,
    get_kernel,
    i32,
    require_u8,
    strides,
)
from bgblur.parameters import BlurParams
from bgblur.stages.postprocess import fitted_background, postprocess_chain

_BLOCK = (32, 8, 1)  # FU_BX, FU_BY in fused.cu
_TILE_W = 32  # FU_TX
_TILE_H = 16  # FU_TY (two rows per thread)
_COLOUR = 511  # colour weights of guide differences -255..255
_TAP_BYTES = 16  # sizeof(LinearTap): four ints
_MAX_WORKSPACES = 8  # small-image workspaces kept, plain and halo-free (LRU dropped)
_MAX_TABLES = 16  # weight tables kept per kind


def fused_rgb_pitch(tile_w: int) -> int:
    """Bytes per row of the RGB tile (``fused_rgb_pitch`` in fused.cu)."""
    return (tile_w * 3 + 6 + 3) & ~3


def fused_shared_bytes(radius: int, refine: bool) -> int:
    """Dynamic shared memory of a ``fused_post_*`` block (layout in fused.cu)."""
    halo = radius if refine else 0
    tw, th = _TILE_W + 2 * halo, _TILE_H + 2 * halo
    floats = (_COLOUR + (2 * halo + 1) ** 2 + th * tw) if refine else 0
    taps = (tw + th + _TILE_W + _TILE_H) * _TAP_BYTES
    row_offsets = 4 * th
    tiles = th * fused_rgb_pitch(tw) + _TILE_H * _TILE_W * 4 + (th * tw if refine else 0)
    return 4 * floats + taps + row_offsets + tiles


def bilateral_radius(diameter: int) -> int:
    """ximgproc's window radius ``max(d // 2, 1)``; 0 means no refinement (diameter 0 or 1)."""
    return max(int(diameter) // 2, 1) if int(diameter) > 1 else 0


def fits_fused(diameter: int) -> bool:
    """Whether the fused kernel serves this bilateral diameter (else the per-op chain does)."""
    radius = bilateral_radius(diameter)
    return fused_shared_bytes(radius, radius > 0) <= SHARED_MEMORY_LIMIT


class FusedPostprocess:
    """``(frames [B, H, W, 3] u8, probability [B, 1, h, w] f16/f32, params) -> (blurred, mask)``.

    CuPy arrays in, CuPy arrays out, on the arrays' device and the current stream; the same
    results as ``bgblur.stages.postprocess.postprocess_chain``. Holds the reusable state: small
    working buffers per (device, batch), weight tables per parameter set, and an event that
    orders a call after the previous one when the caller switches streams (the buffers are
    shared between calls). Not thread-safe: one instance per stage (or per thread).

    Args:
        blur_working_hw: ``(h, w)`` at which the background is blurred (CV-CUDA: 224x224).
        mask_interpolation: ``"nearest"`` or ``"linear"`` upscale of the mask.
    """

    def __init__(
        self, blur_working_hw: tuple[int, int] = (224, 224), mask_interpolation: str = "nearest"
    ) -> None:
        if mask_interpolation not in ("nearest", "linear"):
            raise ValueError(
                f"mask_interpolation must be nearest or linear, got {mask_interpolation!r}"
            )
        h, w = (int(v) for v in blur_working_hw)
        if min(h, w) < 1:
            raise ValueError(f"blur_working_hw must be positive, got {blur_working_hw}")
        self.blur_working_hw = (h, w)
        self.mask_interpolation = mask_interpolation
        self._workspaces: collections.OrderedDict[tuple, tuple[Any, Any, Any]] = (
            collections.OrderedDict()
        )
        self._tables: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._events: dict[int, Any] = {}
        self._last: dict[int, int] = {}  # device -> stream of its previous call
        self.launches = 0  # kernels launched by the last call (for the tests and benchmarks)

    # ---- public ----------------------------------------------------------------------------

    def __call__(
        self,
        frames_nhwc_u8: Any,
        probability_n1hw: Any,
        params: BlurParams,
        *,
        background_nhwc_u8: Any = None,
        out: Any = None,
        mask_out: Any = None,
    ) -> tuple[Any, Any]:
        """Returns ``(blurred [B, H, W, 3] uint8, mask [B, H, W] uint8)`` (CuPy).

        ``background_nhwc_u8``: ``[1 or B, h, w, 3]`` uint8 CuPy replacement image
        (``background="image"``). ``out`` / ``mask_out``: optional arrays (views allowed) to
        write the results into; by default both come from CuPy's memory pool.
        """
        import cupy

        frames, probability = frames_nhwc_u8, probability_n1hw
        require_u8("fused postprocess", frames=frames)
        if frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"fused postprocess needs [B, H, W, 3] frames, got {frames.shape}")
        if probability.ndim != 4 or probability.shape[1] != 1:
            raise ValueError(
                f"probability must have shape [B, 1, h, w], got {tuple(probability.shape)}"
            )
        batch, height, width, _ = frames.shape
        if probability.shape[0] != batch:
            raise ValueError(
                f"frames and probability batch sizes differ: {batch} vs {probability.shape[0]}"
            )
        ph, pw = int(probability.shape[2]), int(probability.shape[3])
        with frames.device:
            if out is None:
                out = cupy.empty((batch, height, width, 3), np.uint8)
            if mask_out is None:
                mask_out = cupy.empty((batch, height, width), np.uint8)
            require_u8("fused postprocess", out=out, mask_out=mask_out)
            if tuple(out.shape) != tuple(frames.shape) or tuple(mask_out.shape) != (
                batch,
                height,
                width,
            ):
                raise ValueError(
                    f"out {tuple(out.shape)} / mask_out {tuple(mask_out.shape)} do not match "
                    f"frames {tuple(frames.shape)}"
                )
            self.launches = 0
            if out.size == 0:
                return out, mask_out
            if min(ph, pw) < 1:
                raise ValueError(
                    f"cannot upscale an empty {(ph, pw)} probability to {(height, width)}"
                )
            if not fits_fused(params.bilateral_diameter):
                return self._per_op_chain(
                    frames, probability, params, background_nhwc_u8, out, mask_out
                )
            if probability.dtype not in (np.float16, np.float32):
                probability = probability.astype(np.float32)  # rare: float64 & co.
            stream = cupy.cuda.get_current_stream()
            device = int(frames.device.id)
            self._order_after_previous_call(device, stream)
            small_blurred = fitted_background(frames, params, background_nhwc_u8)
            if small_blurred is None:
                small_blurred = self._small_background(frames, probability, params)
            self._launch_fused(frames, probability, small_blurred, params, out, mask_out)
            self._record_call(device, stream)
        return out, mask_out

    # ---- steps -------------------------------------------------------------------------------

    def _small_background(self, frames: Any, probability: Any, params: BlurParams) -> Any:
        """Frames -> small working image -> Gaussian (halo-free or of the whole image); returns
        the workspace's blurred buffer."""
        from bgblur.ops import background_gpu, gaussian_gpu, resize_gpu

        batch = frames.shape[0]
        small, tmp, small_blurred = self._workspace(int(frames.device.id), batch)
        try:
            ksize, sigma = gaussian_gpu.check_kernel(params.blur_ksize, params.blur_sigma)
        except ValueError:
            raise ValueError(
                f"blur_ksize {params.blur_ksize} / blur_sigma {params.blur_sigma} out of range"
            ) from None
        taps = self._gaussian_taps(ksize, sigma)
        if params.halo_free:  # the weights kernel resizes the frames itself: no resize launch
            work, work_blurred, work_u16 = self._halo_workspace(int(frames.device.id), batch)
            background_gpu.launch_halo_free(
                frames,
                probability,
                taps,
                ksize,
                work=work,
                work_blurred=work_blurred,
                work_u16=work_u16,
                out=small_blurred,
            )
            self.launches += 4
            return small_blurred
        resize_gpu.resize_linear_nhwc(frames, self.blur_working_hw, out=small)
        gaussian_gpu.launch_separable(small, small_blurred, tmp, taps, ksize)
        self.launches += 3
        return small_blurred

    def _launch_fused(
        self,
        frames: Any,
        probability: Any,
        small_blurred: Any,
        params: BlurParams,
        out: Any,
        mask_out: Any,
    ) -> None:
        batch, height, width, _ = frames.shape
        ph, pw = int(probability.shape[2]), int(probability.shape[3])
        sh, sw = int(small_blurred.shape[1]), int(small_blurred.shape[2])
        radius = bilateral_radius(params.bilateral_diameter)
        refine = radius > 0
        tables = (
            self._bilateral_tables(
                radius, float(params.bilateral_sigma_color), float(params.bilateral_sigma_space)
            )
            if refine
            else None
        )
        name = "fused_post_{}_{}_{}".format(
            "f16" if probability.dtype == np.float16 else "f32",
            self.mask_interpolation,
            "refine" if refine else "plain",
        )
        p_strides = strides(probability)
        grid = check_grid(
            "fused postprocess", (blocks(width, _TILE_W), blocks(height, _TILE_H), batch)
        )
        get_kernel("fused", name)(
            grid,
            _BLOCK,
            (
                probability,
                p_strides[0],
                p_strides[2],
                p_strides[3],
                i32(1 if params.soft_mask else 0),
                f32(params.mask_threshold),
                i32(ph),
                i32(pw),
                _scale(pw, width),
                _scale(ph, height),
                frames,
                *strides(frames),
                small_blurred,
                i32(sh),
                i32(sw),
                *strides(small_blurred),
                _scale(sw, width),
                _scale(sh, height),
                tables if tables is not None else np.uint64(0),  # NULL
                out,
                *strides(out),
                mask_out,
                *strides(mask_out),
                i32(height),
                i32(width),
                i32(radius),
            ),
            shared_mem=fused_shared_bytes(radius, refine),
        )
        self.launches += 1

    def _per_op_chain(
        self,
        frames: Any,
        probability: Any,
        params: BlurParams,
        background: Any,
        out: Any,
        mask_out: Any,
    ) -> tuple[Any, Any]:
        """The unfused chain (bilateral windows too large for the fused kernel)."""
        return postprocess_chain(
            frames,
            probability,
            params,
            blur_working_hw=self.blur_working_hw,
            mask_interpolation=self.mask_interpolation,
            background_nhwc_u8=background,
            out=out,
            mask_out=mask_out,
        )

    # ---- reusable state ------------------------------------------------------------------------

    def _workspace(self, device: int, batch: int) -> tuple[Any, Any, Any]:
        """``(small u8, gaussian tmp u16, small blurred u8)``, each ``[batch, h, w, 3]``."""
        import cupy

        key = (device, batch)
        buffers = self._workspaces.get(key)
        if buffers is None:
            h, w = self.blur_working_hw
            buffers = (
                cupy.empty((batch, h, w, 3), np.uint8),
                cupy.empty((batch, h, w, 3), np.uint16),
                cupy.empty((batch, h, w, 3), np.uint8),
            )
            self._workspaces[key] = buffers
            while len(self._workspaces) > _MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(key)
        return buffers

    def _halo_workspace(self, device: int, batch: int) -> tuple[Any, Any, Any]:
        """``(work u8, blurred work u8, Gaussian tmp u16)``, each ``[batch, h, w, 7]``, of the
        halo-free blur (``background_gpu.launch_halo_free``)."""
        import cupy

        from bgblur.ops.background_gpu import WORK_CHANNELS

        key = ("halo", device, batch)
        buffers = self._workspaces.get(key)
        if buffers is None:
            h, w = self.blur_working_hw
            shape = (batch, h, w, WORK_CHANNELS)
            buffers = (
                cupy.empty(shape, np.uint8),
                cupy.empty(shape, np.uint8),
                cupy.empty(shape, np.uint16),
            )
            self._workspaces[key] = buffers
            while len(self._workspaces) > _MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(key)
        return buffers

    def _cached_table(self, key: tuple, build: Any) -> Any:
        table = self._tables.get(key)
        if table is None:
            table = build()
            self._tables[key] = table
            while len(self._tables) > _MAX_TABLES:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table

    def _bilateral_tables(self, radius: int, sigma_color: float, sigma_space: float) -> Any:
        """``[colour(511) | spatial((2r+1)^2)]`` float32, as ``bilateral_gpu`` builds them."""
        import cupy

        def build() -> Any:
            n_tables = _COLOUR + (2 * radius + 1) ** 2
            tables = cupy.empty(n_tables, np.float32)
            get_kernel("bilateral", "bilateral_tables")(
                (blocks(n_tables, 256),),
                (256,),
                (
                    tables,
                    i32(radius),
                    f64(-0.5 / (sigma_color * sigma_color)),
                    f64(-0.5 / (sigma_space * sigma_space)),
                ),
            )
            self.launches += 1
            return tables

        device = int(cupy.cuda.runtime.getDevice())
        return self._cached_table(("bilateral", device, radius, sigma_color, sigma_space), build)

    def _gaussian_taps(self, ksize: int, sigma: float) -> Any:
        """OpenCV's fixed-point Gaussian taps (int32), as ``gaussian_gpu`` builds them."""
        import cupy

        from bgblur.ops import gaussian_gpu

        def build() -> Any:
            self.launches += 1
            return gaussian_gpu.gaussian_taps(ksize, sigma)

        device = int(cupy.cuda.runtime.getDevice())
        return self._cached_table(("gaussian", device, ksize, sigma), build)

    def _order_after_previous_call(self, device: int, stream: Any) -> None:
        """Make ``stream`` wait for the previous call's work when that ran on another stream
        (it may still be reading the workspace or writing the cached tables); no host sync."""
        last_stream = self._last.get(device)
        if last_stream is not None and last_stream != stream.ptr:
            stream.wait_event(self._events[device])

    def _record_call(self, device: int, stream: Any) -> None:
        import cupy

        event = self._events.get(device)
        if event is None:
            event = cupy.cuda.Event(block=False, disable_timing=True)
            self._events[device] = event
        event.record(stream)
        self._last[device] = stream.ptr


def _scale(src_size: int, dst_size: int) -> np.float64:
    """OpenCV's source step per destination pixel: ``1. / ((double)dst_size / src_size)``."""
    return f64(1.0 / (dst_size / src_size))
