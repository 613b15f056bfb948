"""NV12 -> RGB on the CPU (bgblur.ops.nv12) against OpenCV and the textbook float formula."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bgblur.ops.nv12 import (
    COLOR_MATRICES,
    nv12_coefficients,
    nv12_to_rgb,
    nv12_to_rgb_fixed_point,
    nv12_to_rgb_float_reference,
    rgb_to_nv12,
)

SIZES = [(2, 2), (6, 10), (120, 160), (242, 322)]


def random_nv12(batch: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, h * 3 // 2, w), dtype=np.uint8)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bt601_limited_is_opencv_bit_for_bit(size) -> None:
    nv12 = random_nv12(2, *size)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_YUV2RGB_NV12) for f in nv12])
    np.testing.assert_array_equal(nv12_to_rgb(nv12), expected)
    # the integer formula of the GPU kernel, with OpenCV's constants, is OpenCV too
    np.testing.assert_array_equal(nv12_to_rgb_fixed_point(nv12, nv12_coefficients()), expected)


@pytest.mark.parametrize("matrix", COLOR_MATRICES)
@pytest.mark.parametrize("full_range", [False, True], ids=["limited", "full"])
def test_fixed_point_within_1_lsb_of_the_float_formula(matrix, full_range) -> None:
    nv12 = random_nv12(2, 64, 96, seed=1)
    actual = nv12_to_rgb(nv12, matrix=matrix, full_range=full_range)
    expected = nv12_to_rgb_float_reference(nv12, matrix, full_range)
    assert np.abs(actual.astype(int) - expected).max() <= 1


def test_bt709_differs_from_bt601_where_it_should() -> None:
    nv12 = random_nv12(1, 16, 16, seed=2)
    assert not np.array_equal(nv12_to_rgb(nv12, matrix="bt709"), nv12_to_rgb(nv12))


def test_strided_input_and_out() -> None:
    padded = random_nv12(3, 40, 64, seed=3)
    view = padded[:, :, :48]  # a pitched surface: rows of 64, 48 used
    out = np.zeros((3, 40, 48, 3), np.uint8)
    result = nv12_to_rgb(view, matrix="bt709", out=out)
    assert result is out
    np.testing.assert_array_equal(out, nv12_to_rgb(np.ascontiguousarray(view), matrix="bt709"))


def test_round_trip_of_a_smooth_photo() -> None:
    import skimage.data

    photo = cv2.resize(skimage.data.astronaut(), (128, 96))[None]
    back = nv12_to_rgb(rgb_to_nv12(photo))
    assert np.abs(back.astype(int) - photo).mean() < 4.0


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 6, 7), (6, 8)])
def test_bad_shapes_raise(shape) -> None:
    with pytest.raises(ValueError, match="NV12"):
        nv12_to_rgb(np.zeros(shape, np.uint8))


def test_bad_matrix_and_dtype_raise() -> None:
    with pytest.raises(ValueError, match="matrix must be one of"):
        nv12_to_rgb(np.zeros((1, 6, 4), np.uint8), matrix="bt2020")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        nv12_to_rgb(np.zeros((1, 6, 4), np.uint16))
