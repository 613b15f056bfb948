"""CPU twin of joint_bilateral_filter, pinned to ``cv2.ximgproc.jointBilateralFilter`` per frame
and to a direct NumPy joint bilateral: circular window of radius ``diameter // 2``, Gaussian
spatial and range weights (range on the grey guide), BORDER_REFLECT_101, rounded. Also the
library's own NumPy twin (``joint_bilateral_filter_numpy``, used where OpenCV lacks ximgproc)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from bgblur.ops import joint_bilateral_filter
from bgblur.ops.bilateral import joint_bilateral_filter_numpy


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240614)


def numpy_joint_bilateral(
    mask: np.ndarray, guide: np.ndarray, diameter: int, sigma_color: float, sigma_space: float
) -> np.ndarray:
    """Slow and readable: one shifted copy of the padded images per window offset."""
    radius = max(diameter // 2, 1)
    h, w = mask.shape
    padded_mask = np.pad(mask.astype(np.float64), radius, mode="reflect")  # = REFLECT_101
    padded_guide = np.pad(guide.astype(np.float64), radius, mode="reflect")
    centre = guide.astype(np.float64)
    numerator = np.zeros((h, w))
    denominator = np.zeros((h, w))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx > radius * radius:
                continue
            window = (slice(radius + dy, radius + dy + h), slice(radius + dx, radius + dx + w))
            neighbour = padded_guide[window]
            weight = np.exp(-(dy * dy + dx * dx) / (2 * sigma_space**2)) * np.exp(
                -((neighbour - centre) ** 2) / (2 * sigma_color**2)
            )
            numerator += weight * padded_mask[window]
            denominator += weight
    return np.rint(numerator / denominator)


def ellipse_masks(shape: tuple[int, int], batch: int) -> np.ndarray:
    masks = np.zeros((batch, *shape), np.uint8)
    h, w = shape
    for b in range(batch):
        cv2.ellipse(masks[b], (w // 2 + 7 * b, h // 2), (w // 3, h // 3), 0, 0, 360, 255, -1)
    return masks


def photo_guides() -> np.ndarray:
    astronaut = skimage.data.astronaut()[100:400, 30:481]
    chelsea = skimage.data.chelsea()
    return np.stack(
        [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (astronaut, chelsea, chelsea[::-1])]
    )


class TestJointBilateralFilter:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (1, 1919)])
    @pytest.mark.parametrize("diameter", [0, 5])
    def test_smoke(
        self, rng: np.random.Generator, batch: int, hw: tuple[int, int], diameter: int
    ) -> None:
        mask = rng.integers(0, 256, (batch, *hw), dtype=np.uint8)
        guide = rng.integers(0, 256, (batch, *hw), dtype=np.uint8)
        out = joint_bilateral_filter(mask, guide, diameter, 50.0, 1.0)
        assert isinstance(out, np.ndarray)
        assert out.shape == (batch, *hw)
        assert out.dtype == np.uint8

    @pytest.mark.parametrize(
        ("diameter", "sigma_color", "sigma_space"),
        [(5, 50.0, 1.0), (2, 50.0, 1.0), (4, 20.0, 2.0), (9, 10.0, 3.0), (31, 30.0, 10.0)],
    )
    @pytest.mark.parametrize("hw", [(1, 1), (2, 2), (7, 13), (40, 33)])
    def test_joint_bilateral_matches_numpy_formula(
        self,
        rng: np.random.Generator,
        hw: tuple[int, int],
        diameter: int,
        sigma_color: float,
        sigma_space: float,
    ) -> None:
        mask = rng.integers(0, 256, (3, *hw), dtype=np.uint8)
        guide = rng.integers(0, 256, (3, *hw), dtype=np.uint8)
        out = joint_bilateral_filter(mask, guide, diameter, sigma_color, sigma_space)
        for b in range(3):
            expected = numpy_joint_bilateral(mask[b], guide[b], diameter, sigma_color, sigma_space)
            assert np.abs(out[b].astype(np.int64) - expected).max() <= 1

    def test_joint_bilateral_matches_numpy_formula_on_photos(self) -> None:
        guides = photo_guides()
        masks = ellipse_masks(guides.shape[1:], 3)
        out = joint_bilateral_filter(masks, guides, 9, 50.0, 3.0)
        for b in range(3):
            expected = numpy_joint_bilateral(masks[b], guides[b], 9, 50.0, 3.0)
            assert np.abs(out[b].astype(np.int64) - expected).max() <= 1
        assert (out != masks).any()  # the edges were refined

    @pytest.mark.parametrize(("diameter", "sigma_space"), [(5, 1.0), (15, 5.0)])
    def test_opencv_joint_bilateral_per_frame(self, diameter: int, sigma_space: float) -> None:
        guides = photo_guides()
        masks = ellipse_masks(guides.shape[1:], 3)
        out = joint_bilateral_filter(masks, guides, diameter, 50.0, sigma_space)
        for b in range(3):
            expected = cv2.ximgproc.jointBilateralFilter(
                guides[b], masks[b], diameter, 50.0, sigma_space
            )
            np.testing.assert_array_equal(out[b], expected)

    def test_large_frame_matches_opencv(self, rng: np.random.Generator) -> None:
        guide = rng.integers(0, 256, (1, 1081, 1921), dtype=np.uint8)
        mask = ellipse_masks((1081, 1921), 1)
        out = joint_bilateral_filter(mask, guide, 5, 50.0, 1.0)
        expected = cv2.ximgproc.jointBilateralFilter(guide[0], mask[0], 5, 50.0, 1.0)
        np.testing.assert_array_equal(out[0], expected)

    @pytest.mark.parametrize("diameter", [0, 1])
    def test_diameter_0_or_1_returns_an_unchanged_copy(
        self, rng: np.random.Generator, diameter: int
    ) -> None:
        mask = rng.integers(0, 256, (3, 7, 13), dtype=np.uint8)
        guide = rng.integers(0, 256, (3, 7, 13), dtype=np.uint8)
        out = joint_bilateral_filter(mask, guide, diameter, 50.0, 1.0)
        np.testing.assert_array_equal(out, mask)
        assert not np.shares_memory(out, mask)

    def test_uniform_mask_is_unchanged_whatever_the_guide(self, rng: np.random.Generator) -> None:
        mask = np.full((3, 7, 13), 200, np.uint8)
        guide = rng.integers(0, 256, (3, 7, 13), dtype=np.uint8)
        np.testing.assert_array_equal(joint_bilateral_filter(mask, guide, 9, 10.0, 3.0), mask)

    def test_edge_follows_the_guide_not_the_mask(self) -> None:
        # Guide: dark left half, bright right half. Mask: a blurry ramp across the guide's edge.
        guide = np.zeros((1, 9, 20), np.uint8)
        guide[..., 10:] = 255
        mask = np.tile(np.linspace(0, 255, 20).round().astype(np.uint8), (1, 9, 1))
        out = joint_bilateral_filter(mask, guide, 9, 10.0, 3.0)
        # Pixels next to the edge average only over their own side of the guide.
        assert out[0, 4, 9] < mask[0, 4, 9]
        assert out[0, 4, 10] > mask[0, 4, 10]
        steps = np.diff(out[0, 4].astype(np.int64))
        assert steps.argmax() == 9  # the sharpest step sits on the guide's edge
        assert steps[9] > 3 * (int(mask[0, 4, 10]) - int(mask[0, 4, 9]))

    def test_noncontiguous(self, rng: np.random.Generator) -> None:
        base = rng.integers(0, 256, (3, 41, 61, 2), dtype=np.uint8)
        mask, guide = base[:, 3:40:2, ::3, 0], base[:, 3:40:2, ::-3, 1]
        assert not mask.flags.c_contiguous and not guide.flags.c_contiguous
        out = joint_bilateral_filter(mask, guide, 5, 50.0, 1.0)
        for b in range(3):
            expected = cv2.ximgproc.jointBilateralFilter(
                np.ascontiguousarray(guide[b]), np.ascontiguousarray(mask[b]), 5, 50.0, 1.0
            )
            np.testing.assert_array_equal(out[b], expected)

    @pytest.mark.parametrize("diameter", [0, 5])
    def test_out_is_honoured(self, rng: np.random.Generator, diameter: int) -> None:
        mask = rng.integers(0, 256, (3, 7, 13), dtype=np.uint8)
        guide = rng.integers(0, 256, (3, 7, 13), dtype=np.uint8)
        storage = np.zeros((3, 7, 13, 2), np.uint8)
        out = storage[..., 0]
        result = joint_bilateral_filter(mask, guide, diameter, 50.0, 1.0, out=out)
        assert result is out
        for b in range(3):
            expected = (
                mask[b]
                if diameter <= 1
                else cv2.ximgproc.jointBilateralFilter(guide[b], mask[b], diameter, 50.0, 1.0)
            )
            np.testing.assert_array_equal(storage[b, ..., 0], expected)
        assert not storage[..., 1].any()

    @pytest.mark.parametrize(
        "guide_shape", [(3, 7, 12), (2, 7, 13), (3, 7, 13, 1)], ids=["width", "batch", "channel"]
    )
    def test_exception_when_mask_and_guide_shapes_differ(
        self, rng: np.random.Generator, guide_shape: tuple[int, ...]
    ) -> None:
        mask = rng.integers(0, 256, (3, 7, 13), dtype=np.uint8)
        guide = rng.integers(0, 256, guide_shape, dtype=np.uint8)
        with pytest.raises(ValueError, match="mask and guide must have the same shape"):
            joint_bilateral_filter(mask, guide, 5, 50.0, 1.0)

    @pytest.mark.parametrize(
        ("diameter", "sigma_color", "sigma_space"),
        [(-1, 50.0, 1.0), (5, 0.0, 1.0), (5, -50.0, 1.0), (5, 50.0, 0.0), (5, 50.0, -1.0)],
    )
    def test_exception_when_diameter_is_negative_or_a_sigma_is_not_positive(
        self, rng: np.random.Generator, diameter: int, sigma_color: float, sigma_space: float
    ) -> None:
        mask = rng.integers(0, 256, (1, 7, 13), dtype=np.uint8)
        with pytest.raises(ValueError, match="needs diameter >= 0 and positive sigmas, got"):
            joint_bilateral_filter(mask, mask.copy(), diameter, sigma_color, sigma_space)

    @pytest.mark.parametrize(
        ("out_shape", "out_dtype"),
        [((2, 13, 7), np.uint8), ((2, 7, 13, 1), np.uint8), ((2, 7, 13), np.float32)],
        ids=["transposed", "channel_axis", "wrong_dtype"],
    )
    def test_exception(self, rng: np.random.Generator, out_shape, out_dtype) -> None:
        mask = rng.integers(0, 256, (2, 7, 13), dtype=np.uint8)
        with pytest.raises(
            ValueError, match=r"out must have shape \(2, 7, 13\) and dtype uint8, got"
        ):
            joint_bilateral_filter(
                mask, mask.copy(), 5, 50.0, 1.0, out=np.empty(out_shape, out_dtype)
            )


def assert_close_to_ximgproc(actual: np.ndarray, expected: np.ndarray) -> None:
    """Within 1 LSB everywhere and equal on at least 99% (same float32 arithmetic)."""
    diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    assert diff.max(initial=0) <= 1, f"max difference {diff.max()} LSB"
    assert np.count_nonzero(diff) <= max(2, diff.size // 100)


class TestJointBilateralFilterNumpy:
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (1, 1919)])
    def test_smoke(self, rng: np.random.Generator, hw: tuple[int, int]) -> None:
        mask = rng.integers(0, 256, hw, dtype=np.uint8)
        out = joint_bilateral_filter_numpy(mask, mask.copy(), 5, 50.0, 1.0)
        assert out.shape == hw and out.dtype == np.uint8

    @pytest.mark.parametrize(
        ("diameter", "sigma_color", "sigma_space"),
        [(5, 50.0, 1.0), (2, 50.0, 1.0), (4, 20.0, 2.0), (9, 10.0, 3.0), (31, 30.0, 10.0)],
    )
    @pytest.mark.parametrize("hw", [(1, 1), (2, 2), (7, 13), (1, 1919)])
    def test_opencv_ximgproc_joint_bilateral(
        self,
        rng: np.random.Generator,
        hw: tuple[int, int],
        diameter: int,
        sigma_color: float,
        sigma_space: float,
    ) -> None:
        mask = rng.integers(0, 256, hw, dtype=np.uint8)
        guide = rng.integers(0, 256, hw, dtype=np.uint8)
        out = joint_bilateral_filter_numpy(mask, guide, diameter, sigma_color, sigma_space)
        expected = cv2.ximgproc.jointBilateralFilter(
            guide, mask, diameter, sigma_color, sigma_space
        )
        assert_close_to_ximgproc(out, expected)
        reference = numpy_joint_bilateral(mask, guide, diameter, sigma_color, sigma_space)
        assert np.abs(out.astype(np.int64) - reference).max() <= 1

    def test_opencv_ximgproc_joint_bilateral_on_photos(self) -> None:
        guides = photo_guides()
        masks = ellipse_masks(guides.shape[1:], 3)
        for b in range(3):
            out = joint_bilateral_filter_numpy(masks[b], guides[b], 5, 50.0, 1.0)
            expected = cv2.ximgproc.jointBilateralFilter(guides[b], masks[b], 5, 50.0, 1.0)
            assert_close_to_ximgproc(out, expected)
            assert (out != masks[b]).any()

    def test_the_op_falls_back_to_it_when_opencv_has_no_ximgproc(
        self, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        base = rng.integers(0, 256, (3, 41, 61, 2), dtype=np.uint8)
        mask, guide = base[:, 3:40:2, ::3, 0], base[:, 3:40:2, ::-3, 1]  # non-contiguous
        expected = [
            cv2.ximgproc.jointBilateralFilter(
                np.ascontiguousarray(guide[b]), np.ascontiguousarray(mask[b]), 9, 20.0, 3.0
            )
            for b in range(3)
        ]
        monkeypatch.delattr(cv2, "ximgproc")
        out = np.zeros((3, *mask.shape[1:]), np.uint8)
        result = joint_bilateral_filter(mask, guide, 9, 20.0, 3.0, out=out)
        assert result is out
        for b in range(3):
            assert_close_to_ximgproc(out[b], expected[b])
        np.testing.assert_array_equal(joint_bilateral_filter(mask, guide, 1, 20.0, 3.0), mask)
