"""CPU twin of rgb_to_grey: OpenCV's COLOR_RGB2GRAY, i.e. BT.601 luma of RGB (not BGR) frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from bgblur.ops import rgb_to_grey

BT601 = np.array([0.299, 0.587, 0.114])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240613)


def photo_batch() -> np.ndarray:
    astronaut = skimage.data.astronaut()[100:400, 30:481]
    chelsea = skimage.data.chelsea()
    return np.stack([astronaut, chelsea, chelsea[:, ::-1]])


class TestRgbToGrey:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (1, 1919)])
    def test_smoke(self, rng: np.random.Generator, batch: int, hw: tuple[int, int]) -> None:
        frames = rng.integers(0, 256, (batch, *hw, 3), dtype=np.uint8)
        out = rgb_to_grey(frames)
        assert isinstance(out, np.ndarray)
        assert out.shape == (batch, *hw)
        assert out.dtype == np.uint8

    def test_opencv_rgb2gray_per_frame(self) -> None:
        frames = photo_batch()
        out = rgb_to_grey(frames)
        for b, frame in enumerate(frames):
            np.testing.assert_array_equal(out[b], cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))

    def test_large_frame_matches_opencv(self, rng: np.random.Generator) -> None:
        frames = rng.integers(0, 256, (1, 1081, 1921, 3), dtype=np.uint8)
        np.testing.assert_array_equal(
            rgb_to_grey(frames)[0], cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
        )

    @pytest.mark.parametrize("source", ["photos", "random"])
    def test_rgb_to_grey_matches_bt601_formula(self, rng: np.random.Generator, source: str) -> None:
        if source == "photos":
            frames = photo_batch()
        else:
            frames = rng.integers(0, 256, (3, 7, 13, 3), dtype=np.uint8)
        expected = np.rint(frames.astype(np.float64) @ BT601)
        diff = np.abs(rgb_to_grey(frames).astype(np.int64) - expected)
        assert diff.max() <= 1

    def test_primaries_are_weighted_in_rgb_order(self) -> None:
        frames = np.zeros((1, 1, 4, 3), np.uint8)
        frames[0, 0, 0] = (255, 0, 0)
        frames[0, 0, 1] = (0, 255, 0)
        frames[0, 0, 2] = (0, 0, 255)
        frames[0, 0, 3] = (255, 255, 255)
        # round(0.299 * 255), round(0.587 * 255), round(0.114 * 255), 255
        assert rgb_to_grey(frames).ravel().tolist() == [76, 150, 29, 255]

    def test_noncontiguous(self, rng: np.random.Generator) -> None:
        base = rng.integers(0, 256, (3, 41, 61, 3), dtype=np.uint8)
        frames = base[:, 3:40:2, 5:60:3]
        assert not frames.flags.c_contiguous
        out = rgb_to_grey(frames)
        for b in range(3):
            expected = cv2.cvtColor(np.ascontiguousarray(frames[b]), cv2.COLOR_RGB2GRAY)
            np.testing.assert_array_equal(out[b], expected)

    def test_channel_reversed_view_is_read_as_rgb(self, rng: np.random.Generator) -> None:
        bgr = rng.integers(0, 256, (3, 7, 13, 3), dtype=np.uint8)
        out = rgb_to_grey(bgr[..., ::-1])
        for b in range(3):
            np.testing.assert_array_equal(out[b], cv2.cvtColor(bgr[b], cv2.COLOR_BGR2GRAY))

    def test_out_is_honoured(self, rng: np.random.Generator) -> None:
        frames = rng.integers(0, 256, (3, 7, 13, 3), dtype=np.uint8)
        storage = np.zeros((3, 7, 13, 2), np.uint8)
        out = storage[..., 1]
        result = rgb_to_grey(frames, out=out)
        assert result is out
        for b in range(3):
            expected = cv2.cvtColor(frames[b], cv2.COLOR_RGB2GRAY)
            np.testing.assert_array_equal(storage[b, ..., 1], expected)
        assert not storage[..., 0].any()

    @pytest.mark.parametrize(
        ("out_shape", "out_dtype"),
        [((2, 7, 13, 1), np.uint8), ((2, 13, 7), np.uint8), ((2, 7, 13), np.float32)],
        ids=["channel_axis", "transposed", "wrong_dtype"],
    )
    def test_exception(self, rng: np.random.Generator, out_shape, out_dtype) -> None:
        frames = rng.integers(0, 256, (2, 7, 13, 3), dtype=np.uint8)
        with pytest.raises(
            ValueError, match=r"out must have shape \(2, 7, 13\) and dtype uint8, got"
        ):
            rgb_to_grey(frames, out=np.empty(out_shape, out_dtype))
