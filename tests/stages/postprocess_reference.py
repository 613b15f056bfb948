"""An independent reference of the postprocess, from plain OpenCV and NumPy calls per frame.

The stage (``bgblur.stages.postprocess``) and the whole pipeline are held to it: mask =
``round(clip(p, 0, 1) * 255)`` (or ``255 where p >= threshold``), ``cv2.resize`` to the frame
size, ``cv2.ximgproc.jointBilateralFilter`` guided by the grey frame (diameter > 1);
background = ``cv2.resize`` (INTER_LINEAR) to the working size, ``cv2.GaussianBlur``,
``cv2.resize`` back; composite = ``rint(frame * m + background * (1 - m))``, ``m = mask / 255``
in float64 (the library's integer composite is within 1 LSB of it).
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
    background = reference_background(frames, working_hw, params.blur_ksize, params.blur_sigma)
    return mask, background, float_composite(frames, background, mask)
