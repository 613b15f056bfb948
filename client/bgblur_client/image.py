"""Blur the background of a still image file.

Images are read and written with OpenCV (any format it supports; EXIF orientation is
applied on read). Arrays in this package are RGB; OpenCV's BGR order stays inside this
module. Outputs are encoded in memory and appear whole (:mod:`bgblur_client.files`): the
blurred image and its mask only once both are ready, so a failed run leaves existing files
as they were.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bgblur_client.errors import ClientError, UsageError
from bgblur_client.files import check_output_path, write_bytes_whole
from bgblur_client.png import without_icc_profile
from bgblur_client.transport import Background, BlurClient, ParameterValue


@dataclass(frozen=True)
class ImageBlur:
    """The outcome of :func:`blur_image_file`.

    Attributes:
        input_rgb: The image as read, uint8 ``[H, W, 3]``.
        blurred_rgb: The server's output, uint8 ``[H, W, 3]``.
        mask_u8: Foreground probability x255, uint8 ``[H, W]``, or ``None`` unless requested.
        seconds: Wall time of the inference request.
        foreground_share: Share of the picture the person covers (0..1; about 0: no person).
    """

    input_rgb: np.ndarray
    blurred_rgb: np.ndarray
    mask_u8: np.ndarray | None
    seconds: float
    foreground_share: float | None = None


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]`` (grey and alpha are converted).

    Raises:
        ClientError: The file is missing or not an image OpenCV can decode.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot read image '{path}': it is a directory, not an image file")
    if not path.is_file():
        raise UsageError(f"cannot read image '{path}': no such file")
    # Decoded from memory without a PNG's colour profile, which OpenCV ignores anyway: libpng
    # warns on stderr about faulty ones (bgblur_client.png).
    try:
        encoded = path.read_bytes()
    except OSError as exc:  # e.g. no read permission
        raise ClientError(f"cannot read image '{path}': {exc.strerror or exc}") from exc
    data = np.frombuffer(without_icc_profile(encoded), np.uint8)
    image_bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image_bgr is None:
        raise ClientError(f"cannot read image '{path}': not an image format OpenCV can decode")
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)


def check_image_writable(path: str | Path) -> None:
    """Fail early, before any work, if :func:`write_image` could not write ``path``.

    Raises:
        UsageError: Unsupported extension, a directory, or a missing directory.
    """
    path = Path(path)
    if not cv2.haveImageWriter(str(path)):
        raise UsageError(f"cannot write image '{path}': unsupported file extension")
    check_output_path(path, "image")


def encode_image_file(path: str | Path, image_u8: np.ndarray) -> bytes:
    """The bytes of an image file of uint8 RGB ``[H, W, 3]`` or grayscale ``[H, W]``, in the
    format of ``path``'s extension.

    Raises:
        ClientError: Unsupported extension or the encoder failed.
    """
    check_image_writable(path)
    pixels = cv2.cvtColor(image_u8, cv2.COLOR_RGB2BGR) if image_u8.ndim == 3 else image_u8
    try:
        ok, encoded = cv2.imencode(Path(path).suffix, pixels)
    except cv2.error as exc:
        raise ClientError(f"cannot write image '{path}': {exc}") from exc
    if not ok:
        raise ClientError(f"cannot write image '{path}'")
    return encoded.tobytes()


def write_image(path: str | Path, image_u8: np.ndarray) -> None:
    """Write uint8 RGB ``[H, W, 3]`` or grayscale ``[H, W]``; the format follows the extension.
    The file appears whole (written beside it, then renamed).

    Raises:
        ClientError: Unsupported extension, missing directory or failed write.
    """
    write_bytes_whole(path, encode_image_file(path, image_u8))


def blur_image_file(
    client: BlurClient,
    in_path: str | Path,
    out_path: str | Path,
    *,
    mask_path: str | Path | None = None,
    parameters: Mapping[str, ParameterValue] | None = None,
    background: Background = None,
) -> ImageBlur:
    """Read ``in_path``, blur (or replace) its background on the server and write ``out_path``.

    Args:
        client: Connected client.
        in_path: Input image.
        out_path: Output image; the format follows the extension.
        mask_path: Also write the foreground mask as a grayscale image here.
        parameters: Optional server parameters, e.g. ``{"blur_ksize": 31}``.
        background: None (the blur), an ``(R, G, B)`` colour, or a uint8 RGB image that the
            server scales to cover the picture (:meth:`BlurClient.blur`).

    Raises:
        ClientError: Unreadable input, unwritable output, or a server-side failure.
    """
    image_rgb = read_image_rgb(in_path)
    # Check the output paths before spending a round trip on the server.
    for path in (out_path, mask_path):
        if path is not None:
            check_image_writable(path)
    started = time.perf_counter()
    result = client.blur(
        image_rgb,
        want_mask=mask_path is not None,
        parameters=parameters,
        background=background,
        want_foreground_share=True,
    )
    seconds = time.perf_counter() - started
    # Both encoded before either is written: a failure leaves neither file changed.
    encoded = [(out_path, encode_image_file(out_path, result.blurred_nhwc_u8))]
    if mask_path is not None:
        assert result.mask_nhw_u8 is not None  # requested above
        encoded.append((mask_path, encode_image_file(mask_path, result.mask_nhw_u8)))
    for path, data in encoded:
        write_bytes_whole(path, data)
    share = None if result.foreground_share is None else float(result.foreground_share)
    return ImageBlur(image_rgb, result.blurred_nhwc_u8, result.mask_nhw_u8, seconds, share)


def parse_background(text: str) -> tuple[int, int, int] | np.ndarray:
    """The CLI's ``--background``: ``#RRGGBB`` (a colour) or an image file (read as RGB).

    Raises:
        UsageError: a ``#`` value that is not ``#RRGGBB``, or an unreadable file.
    """
    from bgblur_client.transport import parse_color

    if text.startswith("#"):
        try:
            return parse_color(text)
        except ValueError as exc:
            raise UsageError(f"--background: {exc}") from None
    return read_image_rgb(text)
