"""Backgrounds: the halo-free blur of a frame's background, and a replacement image fitted to it.

Halo-free blur (``halo_free_blur``): the whole-frame blur of CV-CUDA's sample mixes the person's
colours (hair, skin) into the background near them, a glow around the person. Here the
background is blurred from background pixels alone, as a mask-weighted, normalised blur at the
working resolution::

    m    = resize(round(clip(p, 0, 1) * 255))        probability -> u8 mask, bilinear to (h, w)
    m    = max over the (2 r + 1)^2 window of m      the person grown by r pixels (``grow_px``)
    w    = clip(round((hi - m) * 255 / (hi - lo)))   background weight, u8: 255 below lo, 0 above hi
    P_c  = (frame_c * w + 127) // 255                premultiplied colour, u8
    G    = the u8 Gaussian (OpenCV's bit-exact fixed point) of P_c, w and frame_c
    bg_c = (255 G(P_c) + G(frame_c) * max(T - G(w), 0) + d // 2) // d,  d = max(G(w), T)

so ``bg = G(frame * w) / G(w)`` where the window holds enough background (``G(w) >= T``,
``min_weight``), blending into the plain blur ``G(frame)`` where it holds little or none (deep
inside the person, where the composite shows the frame anyway). Integers throughout: the GPU
twin (``background_gpu``) gives the same bytes.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from bgblur.ops.dispatch import array_module, check_out, is_gpu_array
from bgblur.ops.gaussian import gaussian_blur
from bgblur.ops.mask import probability_to_mask
from bgblur.ops.resize import resize_linear_nhwc, upscale_mask

# Defaults of halo_free_blur's weight, chosen by bench/quality.py's halo figure
# (docs/benchmarks.md).
# A ramp around the composite's half-way point (mask 128) measured best: wider ramps or a grown
# person exclude background that belongs in the blur, narrower ones let the soft edge leak.
GROW_PX = 0  # the person grown by this many working-resolution pixels
WEIGHT_LO = 96  # mask value (probability x 255) below which a pixel is wholly background
WEIGHT_HI = 160  # ... above which it is no background at all
MIN_WEIGHT = 64  # G(w) below this blends into the plain blur (u8 units: 255 = all background)


def check_weight_args(grow_px: int, weight_lo: int, weight_hi: int, min_weight: int) -> None:
    """ValueError unless ``0 <= grow_px <= 15``, ``0 <= lo < hi <= 255`` and
    ``1 <= min_weight <= 255``."""
    if not 0 <= int(grow_px) <= 15:
        raise ValueError(f"grow_px must be in [0, 15], got {grow_px}")
    if not 0 <= int(weight_lo) < int(weight_hi) <= 255:
        raise ValueError(f"need 0 <= weight_lo < weight_hi <= 255, got {weight_lo}, {weight_hi}")
    if not 1 <= int(min_weight) <= 255:
        raise ValueError(f"min_weight must be in [1, 255], got {min_weight}")


def weight_table(weight_lo: int, weight_hi: int) -> np.ndarray:
    """``[256]`` uint8: background weight of each mask value, ``clip(round((hi - m) * 255 /
    (hi - lo)), 0, 255)`` (integer rounding, half up)."""
    m = np.arange(256, dtype=np.int64)
    span = int(weight_hi) - int(weight_lo)
    w = ((int(weight_hi) - m) * 255 + span // 2) // span
    return np.clip(w, 0, 255).astype(np.uint8)


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
    """The background of ``small_nhwc_u8`` blurred from background pixels only (module docstring).

    Args:
        small_nhwc_u8: ``[B, h, w, 3]`` uint8 RGB frames at the working resolution (NumPy, or
            CuPy: the GPU twin on the current stream).
        probability_n1hw: ``[B, 1, ph, pw]`` float16/float32 foreground probability (any size:
            resized bilinearly to ``(h, w)``), same device.
        ksize, sigma: the Gaussian (odd ksize >= 1, sigma > 0), as ``gaussian_blur``.
        grow_px, weight_lo, weight_hi: the background weight (module docstring).
        min_weight: ``T`` of the module docstring.
        out: optional ``[B, h, w, 3]`` uint8 array to write into.

    Returns:
        ``[B, h, w, 3]`` uint8 on the input's device.
    """
    batch, h, w, channels = small_nhwc_u8.shape
    if channels != 3:
        raise ValueError(f"halo_free_blur needs [B, h, w, 3] frames, got {small_nhwc_u8.shape}")
    if probability_n1hw.ndim != 4 or probability_n1hw.shape[1] != 1:
        raise ValueError(
            f"probability must have shape [B, 1, h, w], got {tuple(probability_n1hw.shape)}"
        )
    if probability_n1hw.shape[0] != batch:
        raise ValueError(
            f"frames and probability batch sizes differ: {batch} vs {probability_n1hw.shape[0]}"
        )
    if ksize < 1 or ksize % 2 == 0 or not sigma > 0:
        raise ValueError(
            f"halo_free_blur needs an odd ksize >= 1 and sigma > 0, got {ksize}, {sigma}"
        )
    check_weight_args(grow_px, weight_lo, weight_hi, min_weight)
    out = check_out(out, (batch, h, w, 3), np.uint8, small_nhwc_u8)
    if is_gpu_array(small_nhwc_u8):
        from bgblur.ops import background_gpu

        return background_gpu.halo_free_blur(
            small_nhwc_u8,
            probability_n1hw,
            ksize,
            sigma,
            grow_px=grow_px,
            weight_lo=weight_lo,
            weight_hi=weight_hi,
            min_weight=min_weight,
            out=out,
        )
    weights = background_weight(probability_n1hw, (h, w), grow_px, weight_lo, weight_hi)
    premultiplied = np.empty((batch, h, w, 4), np.uint8)
    premultiplied[..., :3] = (small_nhwc_u8.astype(np.uint32) * weights[..., None] + 127) // 255
    premultiplied[..., 3] = weights
    blurred_premultiplied = gaussian_blur(premultiplied, ksize, sigma).astype(np.int64)
    blurred_plain = gaussian_blur(small_nhwc_u8, ksize, sigma).astype(np.int64)
    return normalise(blurred_premultiplied, blurred_plain, min_weight, out)


def background_weight(
    probability_n1hw: np.ndarray,
    out_hw: tuple[int, int],
    grow_px: int = GROW_PX,
    weight_lo: int = WEIGHT_LO,
    weight_hi: int = WEIGHT_HI,
) -> np.ndarray:
    """``[B, h, w]`` uint8 background weight ``w`` of the module docstring (CPU).

    Args:
        probability_n1hw: ``[B, 1, ph, pw]`` float NumPy probability.
        out_hw: ``(h, w)`` of the working resolution.
    """
    mask = upscale_mask(probability_to_mask(probability_n1hw), out_hw, interpolation="linear")
    if grow_px > 0:
        kernel = np.ones((2 * grow_px + 1, 2 * grow_px + 1), np.uint8)
        for b in range(mask.shape[0]):
            mask[b] = cv2.dilate(mask[b], kernel)  # out-of-image pixels are ignored
    return weight_table(weight_lo, weight_hi)[mask]


def normalise(
    blurred_premultiplied: np.ndarray, blurred_plain: np.ndarray, min_weight: int, out: np.ndarray
) -> np.ndarray:
    """``bg_c`` of the module docstring from ``[B, h, w, 4]`` G(P_r, P_g, P_b, w) and
    ``[B, h, w, 3]`` G(frame) (integer arrays) into ``out`` ``[B, h, w, 3]`` uint8."""
    weight = blurred_premultiplied[..., 3:4]
    den = np.maximum(weight, min_weight)
    num = 255 * blurred_premultiplied[..., :3] + blurred_plain * np.maximum(min_weight - weight, 0)
    out[...] = np.minimum((num + den // 2) // den, 255)
    return out


def cover_crop(image_hw: tuple[int, int], frame_hw: tuple[int, int]) -> tuple[slice, slice]:
    """The centred ``(rows, cols)`` slices of an image of ``image_hw`` with the frame's aspect
    ratio, as large as the image allows (scaled to ``frame_hw`` it covers the frame)."""
    ih, iw = (int(v) for v in image_hw)
    fh, fw = (int(v) for v in frame_hw)
    if min(ih, iw, fh, fw) < 1:
        raise ValueError(f"cover_crop needs non-empty sizes, got {image_hw} and {frame_hw}")
    if ih * fw > iw * fh:  # the image is taller than the frame: crop rows
        ch, cw = min(ih, max(1, (iw * fh + fw // 2) // fw)), iw
    else:  # wider (or the same shape): crop columns
        ch, cw = ih, min(iw, max(1, (ih * fw + fh // 2) // fh))
    y0, x0 = (ih - ch) // 2, (iw - cw) // 2
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


def cover_resize_nhwc(images_nhwc_u8: Any, frame_hw: tuple[int, int], *, out: Any = None) -> Any:
    """Images scaled to cover ``frame_hw`` and centre-cropped: ``cover_crop`` then a bilinear
    ``resize_linear_nhwc`` (an image of the frame's size comes back as it is, copied).

    Args:
        images_nhwc_u8: ``[B, h, w, C]`` uint8 (NumPy or CuPy; the resize runs on its device).
        frame_hw: ``(H, W)`` of the result.
        out: optional ``[B, H, W, C]`` uint8 array to write into.

    Returns:
        ``[B, H, W, C]`` uint8 on the input's device.
    """
    rows, cols = cover_crop(images_nhwc_u8.shape[1:3], frame_hw)
    cropped = images_nhwc_u8[:, rows, cols]
    if tuple(cropped.shape[1:3]) == tuple(frame_hw):
        out = check_out(out, tuple(cropped.shape), np.uint8, images_nhwc_u8)
        out[...] = cropped
        return out
    return resize_linear_nhwc(cropped, frame_hw, out=out)


def solid_color_nhwc(color_rgb: tuple[int, int, int], like: Any) -> Any:
    """A ``[1, 1, 1, 3]`` uint8 image of ``color_rgb`` on ``like``'s device (bilinear upscaling
    of one pixel gives that colour exactly: a background for the composite)."""
    return array_module(like).asarray(np.asarray(color_rgb, np.uint8).reshape(1, 1, 1, 3))
