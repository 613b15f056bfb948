"""CPU twin of gaussian_blur, pinned to ``cv2.GaussianBlur`` per frame and to a separable NumPy
Gaussian (normalized ``exp(-x^2 / 2 sigma^2)`` taps, BORDER_REFLECT_101) within 1 LSB."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from bgblur.ops import gaussian_blur


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240615)


def numpy_gaussian(image: np.ndarray, ksize: int, sigma: float) -> np.ndarray:
    radius = ksize // 2
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    src = image.astype(np.float64)
    h, w = src.shape[:2]
    rest = ((0, 0),) * (src.ndim - 2)
    padded = np.pad(src, ((radius, radius), (0, 0), *rest), mode="reflect")  # = REFLECT_101
    src = sum(taps[i] * padded[i : i + h] for i in range(ksize))
    padded = np.pad(src, ((0, 0), (radius, radius), *rest), mode="reflect")
    return sum(taps[i] * padded[:, i : i + w] for i in range(ksize))


def smooth_frames(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Band-limited random frames (sums of slow random cosines), like natural images.

    On white noise OpenCV's fixed-point 8-bit taps can drift past 1 LSB from the exact Gaussian
    (up to 5 LSB for a 99-tap kernel on a 1-row frame), so the formula is checked on smooth input.
    """
    batch, h, w, channels = shape
    y, x = np.mgrid[:h, :w].astype(np.float64)
    frames = np.empty(shape, np.float64)
    for b in range(batch):
        for c in range(channels):
            fy, fx, phase = rng.uniform(0, 0.3, 3 * 3).reshape(3, 3).T
            waves = np.cos(
                fy[:, None, None] * y + fx[:, None, None] * x + 20 * phase[:, None, None]
            )
            frames[b, ..., c] = 127.5 + 127.5 * waves.mean(axis=0)
    return np.rint(frames).astype(np.uint8)


def photo_batch() -> np.ndarray:
    astronaut = skimage.data.astronaut()[100:400, 30:481]
    chelsea = skimage.data.chelsea()
    return np.stack([astronaut, chelsea, chelsea[::-1, ::-1]])


def assert_within_one_lsb(actual: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(actual.astype(np.int64) - np.rint(expected).astype(np.int64))
    assert diff.max(initial=0) <= 1, f"max difference {diff.max()} LSB"


class TestGaussianBlur:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (1, 1919)])
    @pytest.mark.parametrize("channels", [1, 3, 4])
    def test_smoke(
        self, rng: np.random.Generator, batch: int, hw: tuple[int, int], channels: int
    ) -> None:
        frames = rng.integers(0, 256, (batch, *hw, channels), dtype=np.uint8)
        out = gaussian_blur(frames, 15, 5.0)
        assert isinstance(out, np.ndarray)
        assert out.shape == (batch, *hw, channels)
        assert out.dtype == np.uint8

    @pytest.mark.parametrize(("ksize", "sigma"), [(1, 1.0), (3, 0.5), (15, 5.0), (31, 10.0)])
    def test_opencv_gaussian_blur_per_frame(self, ksize: int, sigma: float) -> None:
        frames = photo_batch()
        out = gaussian_blur(frames, ksize, sigma)
        for b, frame in enumerate(frames):
            np.testing.assert_array_equal(out[b], cv2.GaussianBlur(frame, (ksize, ksize), sigma))

    def test_large_frame_matches_opencv(self, rng: np.random.Generator) -> None:
        frames = rng.integers(0, 256, (1, 1081, 1921, 3), dtype=np.uint8)
        np.testing.assert_array_equal(
            gaussian_blur(frames, 15, 5.0)[0], cv2.GaussianBlur(frames[0], (15, 15), 5.0)
        )

    @pytest.mark.parametrize(("ksize", "sigma"), [(3, 0.5), (15, 5.0), (31, 10.0), (99, 100.0)])
    @pytest.mark.parametrize("hw", [(1, 1), (2, 19), (7, 13), (1, 1919)])
    @pytest.mark.parametrize("channels", [1, 3])
    def test_gaussian_blur_matches_numpy_formula(
        self,
        rng: np.random.Generator,
        hw: tuple[int, int],
        ksize: int,
        sigma: float,
        channels: int,
    ) -> None:
        frames = smooth_frames(rng, (3, *hw, channels))
        out = gaussian_blur(frames, ksize, sigma)
        for b in range(3):
            assert_within_one_lsb(out[b], numpy_gaussian(frames[b], ksize, sigma))

    @pytest.mark.parametrize(("ksize", "sigma"), [(3, 0.5), (5, 1.5), (15, 5.0)])
    @pytest.mark.parametrize("hw", [(7, 13), (40, 33)])
    def test_gaussian_blur_matches_numpy_formula_on_noise_with_moderate_kernels(
        self, rng: np.random.Generator, hw: tuple[int, int], ksize: int, sigma: float
    ) -> None:
        frames = rng.integers(0, 256, (3, *hw, 3), dtype=np.uint8)
        out = gaussian_blur(frames, ksize, sigma)
        for b in range(3):
            assert_within_one_lsb(out[b], numpy_gaussian(frames[b], ksize, sigma))

    def test_gaussian_blur_matches_numpy_formula_on_photos(self) -> None:
        frames = photo_batch()
        out = gaussian_blur(frames, 15, 5.0)
        for b, frame in enumerate(frames):
            assert_within_one_lsb(out[b], numpy_gaussian(frame, 15, 5.0))

    def test_ksize_1_is_the_identity(self, rng: np.random.Generator) -> None:
        frames = rng.integers(0, 256, (3, 7, 13, 3), dtype=np.uint8)
        np.testing.assert_array_equal(gaussian_blur(frames, 1, 5.0), frames)

    def test_uniform_frame_is_unchanged(self) -> None:
        frames = np.full((3, 7, 13, 3), (10, 128, 250), np.uint8)
        np.testing.assert_array_equal(gaussian_blur(frames, 31, 10.0), frames)

    def test_noncontiguous(self, rng: np.random.Generator) -> None:
        frames = rng.integers(0, 256, (3, 41, 61, 3), dtype=np.uint8)[:, 3:40:2, 5:60:3, ::-1]
        assert not frames.flags.c_contiguous
        out = gaussian_blur(frames, 5, 1.5)
        for b in range(3):
            expected = cv2.GaussianBlur(np.ascontiguousarray(frames[b]), (5, 5), 1.5)
            np.testing.assert_array_equal(out[b], expected)

    def test_out_is_honoured(self, rng: np.random.Generator) -> None:
        frames = rng.integers(0, 256, (3, 7, 13, 3), dtype=np.uint8)
        storage = np.zeros((3, 7, 13, 6), np.uint8)
        out = storage[..., 3:]
        result = gaussian_blur(frames, 5, 1.5, out=out)
        assert result is out
        for b in range(3):
            expected = cv2.GaussianBlur(frames[b], (5, 5), 1.5)
            np.testing.assert_array_equal(storage[b, ..., 3:], expected)
        assert not storage[..., :3].any()

    @pytest.mark.parametrize(
        ("ksize", "sigma"), [(4, 5.0), (0, 5.0), (-1, 5.0), (-3, 5.0), (15, 0.0), (15, -1.0)]
    )
    def test_exception_when_ksize_is_not_odd_positive_or_sigma_not_positive(
        self, rng: np.random.Generator, ksize: int, sigma: float
    ) -> None:
        frames = rng.integers(0, 256, (1, 7, 13, 3), dtype=np.uint8)
        with pytest.raises(
            ValueError, match=rf"needs an odd ksize >= 1 and sigma > 0, got {ksize}, {sigma}"
        ):
            gaussian_blur(frames, ksize, sigma)

    @pytest.mark.parametrize(
        ("out_shape", "out_dtype"),
        [((2, 13, 7, 3), np.uint8), ((2, 7, 13), np.uint8), ((2, 7, 13, 3), np.float32)],
        ids=["transposed", "no_channel_axis", "wrong_dtype"],
    )
    def test_exception(self, rng: np.random.Generator, out_shape, out_dtype) -> None:
        frames = rng.integers(0, 256, (2, 7, 13, 3), dtype=np.uint8)
        with pytest.raises(
            ValueError, match=r"out must have shape \(2, 7, 13, 3\) and dtype uint8, got"
        ):
            gaussian_blur(frames, 5, 1.0, out=np.empty(out_shape, out_dtype))
