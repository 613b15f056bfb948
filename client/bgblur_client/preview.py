"""Side-by-side before | after previews of one frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bgblur_client.image import write_image

_LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LABEL_COLOR_RGB = (255, 255, 255)
_LABEL_BOX_RGB = (0, 0, 0)
_LABEL_BOX_OPACITY = 0.6


def side_by_side(
    before_rgb: np.ndarray, after_rgb: np.ndarray, *, label: str | None = None
) -> np.ndarray:
    """Put two equally sized uint8 RGB ``[H, W, 3]`` frames next to each other.

    Args:
        before_rgb: The original frame (left half).
        after_rgb: The processed frame (right half).
        label: Optional one-line caption drawn in the top-left corner.

    Returns:
        uint8 RGB ``[H, 2 * W, 3]``.
    """
    if before_rgb.shape != after_rgb.shape or before_rgb.ndim != 3 or before_rgb.shape[2] != 3:
        raise ValueError(
            "before and after must be RGB [H, W, 3] of the same size, got "
            f"{list(before_rgb.shape)} and {list(after_rgb.shape)}"
        )
    canvas_rgb = np.concatenate([before_rgb, after_rgb], axis=1)
    if label:
        _draw_label(canvas_rgb, label)
    return canvas_rgb


def write_preview(
    path: str | Path,
    before_rgb: np.ndarray,
    after_rgb: np.ndarray,
    *,
    label: str | None = None,
) -> None:
    """Write :func:`side_by_side` of the two frames as an image (PNG recommended).

    Raises:
        ValueError: The frames differ in size or are not RGB.
        ClientError: The file cannot be written.
    """
    write_image(path, side_by_side(before_rgb, after_rgb, label=label))


def _draw_label(canvas_rgb: np.ndarray, label: str) -> None:
    """Draw ``label`` in place, white on a translucent dark box, scaled to the frame height."""
    height = canvas_rgb.shape[0]
    scale = max(height / 720, 0.35)
    thickness = max(round(2 * scale), 1)
    (text_w, text_h), baseline = cv2.getTextSize(label, _LABEL_FONT, scale, thickness)
    margin = max(round(10 * scale), 2)
    box_bottom = min(text_h + baseline + 2 * margin, height)
    box_right = min(text_w + 2 * margin, canvas_rgb.shape[1])
    box = canvas_rgb[:box_bottom, :box_right]
    shaded = box * (1 - _LABEL_BOX_OPACITY) + np.array(_LABEL_BOX_RGB) * _LABEL_BOX_OPACITY
    box[:] = shaded.astype(np.uint8)
    cv2.putText(
        canvas_rgb,
        label,
        (margin, margin + text_h),
        _LABEL_FONT,
        scale,
        _LABEL_COLOR_RGB,
        thickness,
        cv2.LINE_AA,
    )
