"""bgblur_client.png: a PNG's colour profile dropped before OpenCV decodes it, on a real file
with the faulty sRGB profile (scikit-image's astronaut photo): the same pixels, and no libpng
warning on stderr (the original file prints one, in a child process: libpng writes to fd 2)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bgblur_client.image import read_image_rgb
from bgblur_client.png import PNG_SIGNATURE, without_icc_profile

skimage_data = pytest.importorskip("skimage.data")
ASTRONAUT = Path(skimage_data.data_dir) / "astronaut.png"


def chunk_types(data: bytes) -> list[bytes]:
    types, at = [], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, at)
        types.append(data[at + 4 : at + 8])
        at += 12 + length
    return types


def decode_stderr(path: Path) -> str:
    """What ``cv2.imdecode`` of the file prints on stderr in a fresh process."""
    code = (
        "import sys, cv2, numpy as np; "
        "data = np.frombuffer(open(sys.argv[1], 'rb').read(), np.uint8); "
        "assert cv2.imdecode(data, cv2.IMREAD_COLOR) is not None"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_the_profile_is_dropped_and_nothing_else(tmp_path: Path) -> None:
    original = ASTRONAUT.read_bytes()
    assert b"iCCP" in chunk_types(original)
    stripped = without_icc_profile(original)
    assert chunk_types(stripped) == [t for t in chunk_types(original) if t != b"iCCP"]
    assert len(original) - len(stripped) > 12  # the chunk's header, profile and CRC
    decoded = cv2.imdecode(np.frombuffer(stripped, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, cv2.imread(str(ASTRONAUT), cv2.IMREAD_UNCHANGED))
    (tmp_path / "stripped.png").write_bytes(stripped)
    assert "iCCP" in decode_stderr(ASTRONAUT)
    assert decode_stderr(tmp_path / "stripped.png") == ""


def test_read_image_rgb_gives_opencv_s_pixels() -> None:
    expected = cv2.cvtColor(cv2.imread(str(ASTRONAUT), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(read_image_rgb(ASTRONAUT), expected)


def test_other_files_are_returned_as_they_are() -> None:
    ok, encoded = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    assert ok
    plain_png = encoded.tobytes()
    assert b"iCCP" not in chunk_types(plain_png)
    ok, jpeg = cv2.imencode(".jpg", np.zeros((4, 4, 3), np.uint8))
    for data in (plain_png, jpeg.tobytes(), b"", b"not an image"):
        assert without_icc_profile(data) is data


def test_a_truncated_png_keeps_its_image_data_as_it_is() -> None:
    """Cut inside the image data: the profile goes, the rest stays (for OpenCV to report)."""
    original = ASTRONAUT.read_bytes()
    assert without_icc_profile(original[:-100]) == without_icc_profile(original)[:-100]
