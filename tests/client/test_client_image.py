"""Reading and writing image files: RGB order and clear errors naming the file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bgblur_client.errors import ClientError, UsageError
from bgblur_client.image import parse_background, read_image_rgb, write_image
from bgblur_client.transport import background_request


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


# ---- backgrounds: what the client sends for each kind of background ------------------------


def test_no_background_or_blur_sends_nothing() -> None:
    assert background_request(None, 2) == ({}, None)
    assert background_request("blur", 2) == ({}, None)


@pytest.mark.parametrize(
    ("background", "sent"),
    [((0, 177, 64), "0,177,64"), ([255, 255, 255], "255,255,255"), ("#00B140", "0,177,64")],
)
def test_a_colour_is_sent_as_parameters(background, sent: str) -> None:
    parameters, tensor = background_request(background, 3)
    assert parameters == {"background": "color", "background_color": sent}
    assert tensor is None


@pytest.mark.parametrize(
    "background", [(0, 0), (0, 0, 256), (-1, 0, 0), (1.5, 0, 0), (True, 0, 0), "#12345", "red"]
)
def test_a_bad_colour_is_a_value_error(background) -> None:
    with pytest.raises(ValueError, match="colour"):
        background_request(background, 1)


def test_one_image_is_repeated_for_every_frame_of_the_batch() -> None:
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    parameters, tensor = background_request(image, 3)
    assert parameters == {"background": "image"}
    assert tensor.shape == (3, 4, 5, 3) and tensor.flags.c_contiguous
    for frame in tensor:
        np.testing.assert_array_equal(frame, image)
    per_frame = np.stack([image, image[::-1], image])
    np.testing.assert_array_equal(background_request(per_frame, 3)[1], per_frame)


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.zeros((4, 5, 3), np.float32), "uint8"),
        (np.zeros((4, 5), np.uint8), "RGB"),
        (np.zeros((4, 5, 4), np.uint8), "RGB"),
        (np.zeros((2, 4, 5, 3), np.uint8), "2 for a batch of 3"),
        ("landscape.png", "colour #RRGGBB"),
    ],
)
def test_a_bad_image_is_a_value_error_saying_why(image, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        background_request(image, 3)


def test_cli_background_is_a_colour_or_an_image_file(tmp_path: Path) -> None:
    image = np.zeros((6, 7, 3), np.uint8)
    image[..., 2] = 200
    path = tmp_path / "wall.png"
    write_image(path, image)
    np.testing.assert_array_equal(parse_background(str(path)), image)
    assert parse_background("#ff8000") == (255, 128, 0)
    with pytest.raises(UsageError, match="--background"):
        parse_background("#ff80")
    with pytest.raises(UsageError, match="no such file"):
        parse_background(str(tmp_path / "missing.png"))
