"""Reading and writing image files: RGB order and clear errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bgblur_client.errors import ClientError
from bgblur_client.image import read_image_rgb, write_image


def test_written_rgb_reads_back_as_rgb(tmp_path: Path) -> None:
    image = np.zeros((8, 10, 3), np.uint8)
    image[..., 0] = 255  # pure red
    path = tmp_path / "red.png"

    write_image(path, image)

    np.testing.assert_array_equal(read_image_rgb(path), image)


def test_grayscale_mask_is_written_as_one_channel(tmp_path: Path) -> None:
    mask = np.arange(80, dtype=np.uint8).reshape(8, 10)
    path = tmp_path / "mask.png"

    write_image(path, mask)

    np.testing.assert_array_equal(read_image_rgb(path)[..., 1], mask)


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.png"

    with pytest.raises(ClientError, match=f"cannot read image '{path}': no such file"):
        read_image_rgb(path)


def test_file_that_is_not_an_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")

    with pytest.raises(ClientError, match=f"cannot read image '{path}'"):
        read_image_rgb(path)


def test_unsupported_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="unsupported file extension"):
        write_image(tmp_path / "out.notanimage", np.zeros((4, 4, 3), np.uint8))


def test_missing_output_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "out.png"

    with pytest.raises(ClientError, match="does not exist"):
        write_image(path, np.zeros((4, 4, 3), np.uint8))
