"""Blur the background of a still image file.

Images are read and written with OpenCV (any format it supports; EXIF orientation is
applied on read). Arrays in this package are RGB; OpenCV's BGR order stays inside this
module.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bgblur_client.errors import ClientError
from bgblur_client.transport import BlurClient, ParameterValue


@dataclass(frozen=True)
class ImageBlur:
    """The outcome of :func:`blur_image_file`.

    Attributes:
        input_rgb: The image as read, uint8 ``[H, W, 3]``.
        blurred_rgb: The server's output, uint8 ``[H, W, 3]``.
        mask_u8: Foreground probability x255, uint8 ``[H, W]``, or ``None`` unless requested.
        seconds: Wall time of the inference request.
    """

    input_rgb: np.ndarray
    blurred_rgb: np.ndarray
    mask_u8: np.ndarray | None
    seconds: float


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]`` (grey and alpha are converted).

    Raises:
        ClientError: The file is missing or not an image OpenCV can decode.
    """
    path = Path(path)
    if not path.is_file():
        raise ClientError(f"cannot read image '{path}': no such file")
    image_bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image_bgr is None:
        raise ClientError(f"cannot read image '{path}': not an image format OpenCV can decode")
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)


def check_image_writable(path: str | Path) -> None:
    """Fail early, before any work, if :func:`write_image` could not write ``path``.

    Raises:
        ClientError: Unsupported extension or missing directory.
    """
    path = Path(path)
    if not cv2.haveImageWriter(str(path)):
        raise ClientError(f"cannot write image '{path}': unsupported file extension")
    if not path.parent.is_dir():
        raise ClientError(f"cannot write image '{path}': directory '{path.parent}' does not exist")


def write_image(path: str | Path, image_u8: np.ndarray) -> None:
    """Write uint8 RGB ``[H, W, 3]`` or grayscale ``[H, W]``; the format follows the extension.

    Raises:
        ClientError: Unsupported extension, missing directory or failed write.
    """
    check_image_writable(path)
    pixels = cv2.cvtColor(image_u8, cv2.COLOR_RGB2BGR) if image_u8.ndim == 3 else image_u8
    if not cv2.imwrite(str(path), pixels):
        raise ClientError(f"cannot write image '{path}'")


def blur_image_file(
    client: BlurClient,
    in_path: str | Path,
    out_path: str | Path,
    *,
    mask_path: str | Path | None = None,
    parameters: Mapping[str, ParameterValue] | None = None,
) -> ImageBlur:
    """Read ``in_path``, blur its background on the server and write ``out_path``.

    Args:
        client: Connected client.
        in_path: Input image.
        out_path: Output image; the format follows the extension.
        mask_path: Also write the foreground mask as a grayscale image here.
        parameters: Optional server parameters, e.g. ``{"blur_ksize": 31}``.

    Raises:
        ClientError: Unreadable input, unwritable output, or a server-side failure.
    """
    image_rgb = read_image_rgb(in_path)
    # Check the output paths before spending a round trip on the server.
    for path in (out_path, mask_path):
        if path is not None:
            check_image_writable(path)
    started = time.perf_counter()
    result = client.blur(image_rgb, want_mask=mask_path is not None, parameters=parameters)
    seconds = time.perf_counter() - started
    write_image(out_path, result.blurred_nhwc_u8)
    if mask_path is not None:
        assert result.mask_nhw_u8 is not None  # requested above
        write_image(mask_path, result.mask_nhw_u8)
    return ImageBlur(image_rgb, result.blurred_nhwc_u8, result.mask_nhw_u8, seconds)
