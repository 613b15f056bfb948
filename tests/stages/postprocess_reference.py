"""An independent reference of the postprocess, from plain OpenCV and NumPy calls per frame.

The stage (``bgblur.stages.postprocess``) and the whole pipeline are held to it: mask =
``round(clip(p, 0, 1) * 255)`` (or ``255 where p >= threshold``), ``cv2.resize`` to the frame
size, ``cv2.ximgproc.jointBilateralFilter`` guided by the grey frame (diameter > 1);
background = ``cv2.resize`` (INTER_LINEAR) to the working size, ``cv2.GaussianBlur`` (of the
whole small frame, or with ``halo_free`` the normalised blur of its background pixels:
``reference_halo_free``), ``cv2.resize`` back; composite =
``rint(frame * m + background * (1 - m))``, ``m = mask / 255`` in float64 (the library's
integer composite is within 1 LSB of it).
"""

from __future__ import annotations

import cv2
import numpy as np

from bgblur.parameters import BlurParams


def reference_mask(
    frames: np.ndarray,
    probability: np.ndarray,
    params: BlurParams,
    interpolation: int = cv2.INTER_NEAREST,
) -> np.ndarray:
    """``[B, H, W]`` uint8 mask of ``[B, H, W, 3]`` uint8 frames and a ``[B, 1, h, w]`` float
    probability; ``interpolation`` is the OpenCV flag of the mask upscale."""
    h, w = frames.shape[1:3]
    result = []
    for frame, p in zip(frames, probability[:, 0].astype(np.float64), strict=True):
        if params.soft_mask:
            low = np.floor(np.clip(p, 0, 1) * 255 + 0.5).astype(np.uint8)
        else:
            low = np.where(p >= params.mask_threshold, 255, 0).astype(np.uint8)
        mask = cv2.resize(low, (w, h), interpolation=interpolation)
        if params.bilateral_diameter > 1:
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            mask = cv2.ximgproc.jointBilateralFilter(
                grey,
                mask,
                params.bilateral_diameter,
                params.bilateral_sigma_color,
                params.bilateral_sigma_space,
            )
        result.append(mask)
    return np.stack(result)


def reference_background(
    frames: np.ndarray, working_hw: tuple[int, int], ksize: int, sigma: float
) -> np.ndarray:
    """Frame -> bilinear to ``working_hw`` -> Gaussian ``(ksize, sigma)`` -> bilinear back, per
    frame: ``[B, H, W, 3]`` uint8."""
    h, w = frames.shape[1:3]
    result = []
    for frame in frames:
        small = cv2.resize(frame, working_hw[::-1], interpolation=cv2.INTER_LINEAR)
        blurred = cv2.GaussianBlur(small, (ksize, ksize), sigma)
        result.append(cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR))
    return np.stack(result)


def reference_halo_free(
    frames: np.ndarray,
    probability: np.ndarray,
    working_hw: tuple[int, int],
    ksize: int,
    sigma: float,
    *,
    grow_px: int = 0,
    weight_lo: int = 96,
    weight_hi: int = 160,
    min_weight: int = 64,
) -> np.ndarray:
    """The halo-free background at the working size, ``[B, h, w, 3]`` uint8, per frame from
    OpenCV calls: mask ``floor(clip(p, 0, 1) * 255 + 0.5)`` -> ``cv2.resize`` INTER_LINEAR ->
    ``cv2.dilate`` (a square of ``2 grow_px + 1``) -> ``cv2.LUT`` of the ramp ``lo..hi`` ->
    premultiplied ``cv2.multiply(frame, w, scale=1/255)``-style rounding in integers ->
    ``cv2.GaussianBlur`` of each plane -> ``(255 Gp + Gf max(T - Gw, 0) + d // 2) // d``,
    ``d = max(Gw, T)``."""
    h, w = working_hw
    span = weight_hi - weight_lo
    ramp = np.array(
        [min(max(((weight_hi - m) * 255 + span // 2) // span, 0), 255) for m in range(256)],
        np.uint8,
    )
    result = []
    for frame, p in zip(frames, probability[:, 0].astype(np.float64), strict=True):
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        low = np.floor(np.clip(p, 0, 1) * 255 + 0.5).astype(np.uint8)
        mask = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
        if grow_px:
            mask = cv2.dilate(mask, np.ones((2 * grow_px + 1,) * 2, np.uint8))
        weight = cv2.LUT(mask, ramp)
        gw = cv2.GaussianBlur(weight, (ksize, ksize), sigma).astype(np.int64)
        den = np.maximum(gw, min_weight)
        planes = []
        for c in range(3):
            f = small[..., c]
            premultiplied = ((f.astype(np.int64) * weight + 127) // 255).astype(np.uint8)
            gp = cv2.GaussianBlur(premultiplied, (ksize, ksize), sigma).astype(np.int64)
            gf = cv2.GaussianBlur(f, (ksize, ksize), sigma).astype(np.int64)
            num = 255 * gp + gf * np.maximum(min_weight - gw, 0)
            planes.append(np.minimum((num + den // 2) // den, 255))
        result.append(np.stack(planes, axis=-1).astype(np.uint8))
    return np.stack(result)


def float_composite(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``rint(fg * m + bg * (1 - m))`` with ``m = mask / 255``, float64 (not cast to uint8)."""
    m = mask[..., None].astype(np.float64) / 255
    return np.rint(fg * m + bg * (1 - m))


def reference_postprocess(
    frames: np.ndarray,
    probability: np.ndarray,
    params: BlurParams,
    *,
    working_hw: tuple[int, int] = (224, 224),
    interpolation: int = cv2.INTER_NEAREST,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask, background, float composite)`` of the whole postprocess."""
    mask = reference_mask(frames, probability, params, interpolation)
    if params.halo_free:
        small = reference_halo_free(
            frames, probability, working_hw, params.blur_ksize, params.blur_sigma
        )
        h, w = frames.shape[1:3]
        background = np.stack(
            [cv2.resize(s, (w, h), interpolation=cv2.INTER_LINEAR) for s in small]
        )
    else:
        background = reference_background(frames, working_hw, params.blur_ksize, params.blur_sigma)
    return mask, background, float_composite(frames, background, mask)
