"""The whole pipeline in one process on the CPU with the fixed_ellipse network, pinned to an
independent reference: a NumPy ellipse x 255, OpenCV upscale and joint bilateral, OpenCV
background blur and the float composite formula."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from bgblur.device import Device
from bgblur.errors import ModelUnavailableError
from bgblur.parameters import BlurParams
from bgblur.pipeline import BackgroundBlurPipeline
from tests.stages.postprocess_reference import reference_postprocess


@pytest.fixture(scope="module")
def pipeline() -> BackgroundBlurPipeline:
    return BackgroundBlurPipeline("fixed_ellipse")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240620)


def ellipse_mask_64() -> np.ndarray:
    """fixed_ellipse's answer at its 64x64 input, x 255: semi-axes 0.8 (rows) and 0.6 (columns)
    of the half-sizes, pixel centres."""
    centres = (np.arange(64) + 0.5) / 32 - 1
    inside = (centres[:, None] / 0.8) ** 2 + (centres[None, :] / 0.6) ** 2 <= 1
    return np.where(inside, 255, 0).astype(np.uint8)


def reference(
    frames: np.ndarray,
    params: BlurParams,
    *,
    working_hw: tuple[int, int] = (224, 224),
    interpolation: int = cv2.INTER_NEAREST,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, background, float composite rounded) per frame, from OpenCV and NumPy only, with
    fixed_ellipse's answer as the probability."""
    probability = np.repeat(ellipse_mask_64()[None, None] / 255.0, len(frames), axis=0)
    return reference_postprocess(
        frames, probability, params, working_hw=working_hw, interpolation=interpolation
    )


def assert_within_one_lsb(actual: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    assert diff.max(initial=0) <= 1, f"max difference {diff.max()} LSB"


class TestBackgroundBlurPipeline:
    def test_runs_on_the_cpu_by_default(self, pipeline: BackgroundBlurPipeline) -> None:
        assert pipeline.device == Device("cpu")
        assert pipeline.spec.name == "fixed_ellipse"
        assert pipeline.runtime.name == "torch-eager-cpu"

    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (1, 1919)])
    def test_smoke(
        self,
        pipeline: BackgroundBlurPipeline,
        rng: np.random.Generator,
        batch: int,
        hw: tuple[int, int],
    ) -> None:
        frames = rng.integers(0, 256, (batch, *hw, 3), dtype=np.uint8)
        blurred, mask = pipeline(frames)
        assert isinstance(blurred, np.ndarray) and isinstance(mask, np.ndarray)
        assert blurred.shape == (batch, *hw, 3) and blurred.dtype == np.uint8
        assert mask.shape == (batch, *hw) and mask.dtype == np.uint8

    def test_fixed_ellipse_end_to_end_matches_the_opencv_reference(
        self, pipeline: BackgroundBlurPipeline, astronaut_frames: np.ndarray
    ) -> None:
        blurred, mask = pipeline(astronaut_frames)
        expected_mask, _, expected_blurred = reference(astronaut_frames, BlurParams())
        np.testing.assert_array_equal(mask, expected_mask)
        assert_within_one_lsb(blurred, expected_blurred)

    def test_centre_stays_sharp_and_corners_are_the_blurred_background(
        self, pipeline: BackgroundBlurPipeline, astronaut_frames: np.ndarray
    ) -> None:
        blurred, mask = pipeline(astronaut_frames)
        _, background, _ = reference(astronaut_frames, BlurParams())
        centre = (slice(None), slice(206, 306), slice(206, 306))
        assert (mask[centre] == 255).all()
        np.testing.assert_array_equal(blurred[centre], astronaut_frames[centre])
        for corner in (np.s_[:, :40, :40], np.s_[:, :40, -40:], np.s_[:, -40:, :40]):
            assert (mask[corner] == 0).all()
            np.testing.assert_array_equal(blurred[corner], background[corner])
        assert (blurred[:, :40, :40] != astronaut_frames[:, :40, :40]).any()

    def test_no_params_means_the_default_params(
        self, pipeline: BackgroundBlurPipeline, astronaut_frames: np.ndarray
    ) -> None:
        blurred, mask = pipeline(astronaut_frames)
        blurred_default, mask_default = pipeline(astronaut_frames, BlurParams())
        np.testing.assert_array_equal(blurred, blurred_default)
        np.testing.assert_array_equal(mask, mask_default)

    @pytest.mark.parametrize(
        "params",
        [
            BlurParams(bilateral_diameter=0, soft_mask=False),
            BlurParams(blur_ksize=31, blur_sigma=10.0, bilateral_diameter=9),
            BlurParams(blur_ksize=1, bilateral_sigma_color=10.0, bilateral_sigma_space=3.0),
        ],
        ids=["hard_unrefined", "strong_blur", "no_blur"],
    )
    def test_params_reach_the_postprocess(
        self,
        pipeline: BackgroundBlurPipeline,
        astronaut_frames: np.ndarray,
        params: BlurParams,
    ) -> None:
        blurred, mask = pipeline(astronaut_frames, params)
        expected_mask, _, expected_blurred = reference(astronaut_frames, params)
        np.testing.assert_array_equal(mask, expected_mask)
        assert_within_one_lsb(blurred, expected_blurred)
        if params.bilateral_diameter == 0:
            assert set(np.unique(mask).tolist()) == {0, 255}

    def test_blur_working_size_and_mask_interpolation_reach_the_postprocess(self) -> None:
        pipeline = BackgroundBlurPipeline(
            "fixed_ellipse", blur_working_hw=(100, 180), mask_interpolation="linear"
        )
        frames = skimage.data.chelsea()[None]
        params = BlurParams(bilateral_diameter=0)
        blurred, mask = pipeline(frames, params)
        expected_mask, _, expected_blurred = reference(
            frames, params, working_hw=(100, 180), interpolation=cv2.INTER_LINEAR
        )
        np.testing.assert_array_equal(mask, expected_mask)
        assert_within_one_lsb(blurred, expected_blurred)

    def test_large_frame_matches_the_opencv_reference(
        self, pipeline: BackgroundBlurPipeline, rng: np.random.Generator
    ) -> None:
        frames = rng.integers(0, 256, (1, 1081, 1921, 3), dtype=np.uint8)
        blurred, mask = pipeline(frames)
        expected_mask, _, expected_blurred = reference(frames, BlurParams())
        np.testing.assert_array_equal(mask, expected_mask)
        assert_within_one_lsb(blurred, expected_blurred)

    def test_noncontiguous(
        self, pipeline: BackgroundBlurPipeline, astronaut_frames: np.ndarray
    ) -> None:
        frames = astronaut_frames[:, ::2, ::-3]
        assert not frames.flags.c_contiguous
        blurred, mask = pipeline(frames)
        expected_mask, _, expected_blurred = reference(np.ascontiguousarray(frames), BlurParams())
        np.testing.assert_array_equal(mask, expected_mask)
        assert_within_one_lsb(blurred, expected_blurred)

    def test_leaves_the_frames_untouched(
        self, pipeline: BackgroundBlurPipeline, rng: np.random.Generator
    ) -> None:
        frames = rng.integers(0, 256, (3, 7, 13, 3), dtype=np.uint8)
        before = frames.copy()
        pipeline(frames)
        np.testing.assert_array_equal(frames, before)

    def test_raises_model_unavailable_for_an_unknown_network(self) -> None:
        with pytest.raises(ModelUnavailableError, match="unknown segmentation model 'nope'"):
            BackgroundBlurPipeline("nope")

    def test_raises_value_error_for_an_unknown_mask_interpolation(self) -> None:
        with pytest.raises(ValueError, match="mask_interpolation must be nearest or linear"):
            BackgroundBlurPipeline("fixed_ellipse", mask_interpolation="cubic")
