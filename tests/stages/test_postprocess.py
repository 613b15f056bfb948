"""Postprocess on the CPU with hand-made probabilities: the composite keeps the frame where the
mask is 255, shows the blurred background where it is 0, and the mask is the (optionally
refined) upscale of probability x 255. References are plain OpenCV calls per frame
(``postprocess_reference``)."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from bgblur.device import Device
from bgblur.errors import InvalidInputError
from bgblur.parameters import BlurParams
from bgblur.stages.postprocess import Postprocess
from tests.stages.postprocess_reference import (
    float_composite,
    reference_background,
    reference_halo_free,
    reference_mask,
    reference_postprocess,
)

NO_REFINEMENT = BlurParams(bilateral_diameter=0, halo_free=False)
# CV-CUDA's sample: the whole small frame blurred (what reference_background computes).
WHOLE_FRAME = BlurParams(halo_free=False)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240618)


@pytest.fixture
def postprocess() -> Postprocess:
    return Postprocess(Device("cpu"))


def box_probability(batch: int, low_hw: tuple[int, int] = (64, 64)) -> np.ndarray:
    """1 in a central box (rows 16..47, columns 20..43 of 64x64), 0 elsewhere; float16."""
    probability = np.zeros((batch, 1, *low_hw), np.float16)
    probability[:, 0, 16:48, 20:44] = 1.0
    return probability


class TestPostprocess:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (300, 451)])
    def test_smoke(
        self, postprocess: Postprocess, rng: np.random.Generator, batch: int, hw: tuple[int, int]
    ) -> None:
        frames = rng.integers(0, 256, (batch, *hw, 3), dtype=np.uint8)
        probability = rng.random((batch, 1, 64, 64)).astype(np.float16)
        blurred, mask = postprocess(frames, probability, BlurParams())
        assert blurred.shape == (batch, *hw, 3) and blurred.dtype == np.uint8
        assert mask.shape == (batch, *hw) and mask.dtype == np.uint8

    @pytest.mark.parametrize("params", [BlurParams(), NO_REFINEMENT], ids=["refined", "raw"])
    def test_where_the_mask_is_255_far_from_edges_the_output_equals_the_frame(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, params: BlurParams
    ) -> None:
        blurred, mask = postprocess(astronaut_frames, box_probability(2), params)
        # The box covers rows 128..383, columns 160..351 at 512x512; stay 8 px inside.
        inside = (slice(None), slice(136, 376), slice(168, 344))
        assert (mask[inside] == 255).all()
        np.testing.assert_array_equal(blurred[inside], astronaut_frames[inside])

    @pytest.mark.parametrize("params", [WHOLE_FRAME, NO_REFINEMENT], ids=["refined", "raw"])
    def test_where_the_mask_is_0_far_from_edges_the_output_equals_the_blurred_background(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, params: BlurParams
    ) -> None:
        blurred, mask = postprocess(astronaut_frames, box_probability(2), params)
        background = reference_background(astronaut_frames, (224, 224), 15, 5.0)
        outside = np.ones(mask.shape, bool)
        outside[:, 120:392, 152:360] = False
        assert (mask[outside] == 0).all()
        np.testing.assert_array_equal(blurred[outside], background[outside])
        assert np.abs(blurred[outside].astype(int) - astronaut_frames[outside]).mean() > 5

    def test_output_is_the_composite_of_frame_and_background_by_the_returned_mask(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, rng: np.random.Generator
    ) -> None:
        probability = rng.random((2, 1, 64, 64)).astype(np.float16)
        blurred, mask = postprocess(astronaut_frames, probability, WHOLE_FRAME)
        background = reference_background(astronaut_frames, (224, 224), 15, 5.0)
        expected = float_composite(astronaut_frames, background, mask)
        assert np.abs(blurred.astype(int) - expected).max() <= 1

    @pytest.mark.parametrize("diameter", [0, 1])
    def test_bilateral_diameter_0_or_1_skips_the_refinement(
        self,
        postprocess: Postprocess,
        astronaut_frames: np.ndarray,
        rng: np.random.Generator,
        diameter: int,
    ) -> None:
        probability = rng.random((2, 1, 64, 64)).astype(np.float16)
        params = BlurParams(bilateral_diameter=diameter)
        _, mask = postprocess(astronaut_frames, probability, params)
        # probability x 255, rounded, nearest-upscaled 8x: constant 8x8 blocks, no refinement.
        low = np.floor(probability[:, 0].astype(np.float64) * 255 + 0.5)
        np.testing.assert_array_equal(mask, low.repeat(8, axis=1).repeat(8, axis=2))

    @pytest.mark.parametrize(
        "params",
        [
            BlurParams(),
            BlurParams(bilateral_diameter=9, bilateral_sigma_color=20.0, bilateral_sigma_space=3.0),
        ],
        ids=["default", "d9"],
    )
    def test_refinement_is_the_joint_bilateral_of_the_upscaled_mask_guided_by_grey(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, params: BlurParams
    ) -> None:
        probability = box_probability(2)
        _, mask = postprocess(astronaut_frames, probability, params)
        expected = reference_mask(astronaut_frames, probability, params, cv2.INTER_NEAREST)
        np.testing.assert_array_equal(mask, expected)
        _, raw = postprocess(astronaut_frames, probability, NO_REFINEMENT)
        assert (mask != raw).any()

    def test_hard_mask_has_only_0_and_255(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, rng: np.random.Generator
    ) -> None:
        probability = rng.random((2, 1, 64, 64)).astype(np.float16)
        params = BlurParams(soft_mask=False, bilateral_diameter=0, mask_threshold=0.3)
        _, mask = postprocess(astronaut_frames, probability, params)
        assert set(np.unique(mask).tolist()) == {0, 255}
        expected = reference_mask(astronaut_frames, probability, params, cv2.INTER_NEAREST)
        np.testing.assert_array_equal(mask, expected)

    @pytest.mark.parametrize(
        ("params", "level"),
        [
            (BlurParams(), 77),  # float16(0.3) * 255 = 76.51
            (BlurParams(soft_mask=False), 0),
            (BlurParams(soft_mask=False, mask_threshold=0.25), 255),
        ],
        ids=["soft", "hard_below", "hard_above"],
    )
    def test_uniform_probability_gives_a_uniform_mask(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, params: BlurParams, level: int
    ) -> None:
        probability = np.full((2, 1, 64, 64), 0.3, np.float16)
        _, mask = postprocess(astronaut_frames, probability, params)
        assert (mask == level).all()

    def test_linear_mask_interpolation(
        self, astronaut_frames: np.ndarray, rng: np.random.Generator
    ) -> None:
        postprocess = Postprocess(Device("cpu"), mask_interpolation="linear")
        probability = rng.random((2, 1, 64, 64)).astype(np.float16)
        for params in (NO_REFINEMENT, BlurParams()):
            _, mask = postprocess(astronaut_frames, probability, params)
            expected = reference_mask(astronaut_frames, probability, params, cv2.INTER_LINEAR)
            np.testing.assert_array_equal(mask, expected)

    @pytest.mark.parametrize(
        ("working_hw", "ksize", "sigma"),
        [((224, 224), 1, 1.0), ((100, 180), 15, 5.0), ((31, 17), 99, 100.0)],
    )
    def test_background_follows_the_working_size_and_blur_params(
        self, working_hw: tuple[int, int], ksize: int, sigma: float
    ) -> None:
        frames = skimage.data.chelsea()[None]
        postprocess = Postprocess(Device("cpu"), blur_working_hw=working_hw)
        probability = np.zeros((1, 1, 64, 64), np.float16)
        blurred, _ = postprocess(
            frames, probability, BlurParams(blur_ksize=ksize, blur_sigma=sigma)
        )
        np.testing.assert_array_equal(
            blurred, reference_background(frames, working_hw, ksize, sigma)
        )

    @pytest.mark.parametrize("params", [BlurParams(), WHOLE_FRAME], ids=["halo-free", "whole"])
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (1, 1919)])
    def test_odd_sizes_match_the_reference(
        self,
        postprocess: Postprocess,
        rng: np.random.Generator,
        batch: int,
        hw: tuple[int, int],
        params: BlurParams,
    ) -> None:
        frames = rng.integers(0, 256, (batch, *hw, 3), dtype=np.uint8)
        probability = rng.random((batch, 1, 5, 9)).astype(np.float16)
        blurred, mask = postprocess(frames, probability, params)
        want_mask, _, want_blurred = reference_postprocess(frames, probability, params)
        np.testing.assert_array_equal(mask, want_mask)
        assert np.abs(blurred.astype(int) - want_blurred).max() <= 1

    def test_large_frame_keeps_the_centre_sharp(
        self, postprocess: Postprocess, rng: np.random.Generator
    ) -> None:
        frames = rng.integers(0, 256, (1, 1081, 1921, 3), dtype=np.uint8)
        blurred, mask = postprocess(frames, box_probability(1), BlurParams())
        np.testing.assert_array_equal(blurred[0, 400:700, 700:1200], frames[0, 400:700, 700:1200])
        assert (mask[0, :200] == 0).all()

    def test_noncontiguous(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, rng: np.random.Generator
    ) -> None:
        frames = astronaut_frames[:, ::2, 1::3]
        probability = rng.random((2, 2, 64, 64)).astype(np.float16)[:, 1:]
        assert not frames.flags.c_contiguous and not probability.flags.c_contiguous
        blurred, mask = postprocess(frames, probability, BlurParams())
        expected_blurred, expected_mask = postprocess(
            np.ascontiguousarray(frames), np.ascontiguousarray(probability), BlurParams()
        )
        np.testing.assert_array_equal(mask, expected_mask)
        np.testing.assert_array_equal(blurred, expected_blurred)
        np.testing.assert_array_equal(
            mask,
            reference_mask(
                np.ascontiguousarray(frames), probability, BlurParams(), cv2.INTER_NEAREST
            ),
        )

    def test_leaves_its_inputs_untouched(
        self, postprocess: Postprocess, rng: np.random.Generator
    ) -> None:
        frames = rng.integers(0, 256, (3, 7, 13, 3), dtype=np.uint8)
        probability = rng.random((3, 1, 5, 9)).astype(np.float16)
        before = frames.copy(), probability.copy()
        postprocess(frames, probability, BlurParams())
        np.testing.assert_array_equal(frames, before[0])
        np.testing.assert_array_equal(probability, before[1])

    def test_exception_when_batch_sizes_differ(
        self, postprocess: Postprocess, rng: np.random.Generator
    ) -> None:
        frames = rng.integers(0, 256, (2, 7, 13, 3), dtype=np.uint8)
        with pytest.raises(ValueError, match="frames and probability batch sizes differ: 2 vs 1"):
            postprocess(frames, box_probability(1), BlurParams())

    @pytest.mark.parametrize("interpolation", ["cubic", "Nearest", ""])
    def test_exception_when_mask_interpolation_is_unknown(self, interpolation: str) -> None:
        with pytest.raises(
            ValueError, match=f"mask_interpolation must be nearest or linear, got '{interpolation}'"
        ):
            Postprocess(Device("cpu"), mask_interpolation=interpolation)

    @pytest.mark.parametrize("working_hw", [(0, 224), (224, 0), (-1, 5)])
    def test_exception_when_blur_working_size_is_not_positive(
        self, working_hw: tuple[int, int]
    ) -> None:
        with pytest.raises(ValueError, match="blur_working_hw must be positive"):
            Postprocess(Device("cpu"), blur_working_hw=working_hw)

    def test_exception_when_a_cpu_stage_gets_a_torch_tensor(
        self, postprocess: Postprocess, rng: np.random.Generator
    ) -> None:
        frames = rng.integers(0, 256, (1, 7, 13, 3), dtype=np.uint8)
        probability = torch.from_numpy(box_probability(1))
        with pytest.raises(TypeError, match="a CPU stage got a Tensor"):
            postprocess(frames, probability, BlurParams())


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_results_after_warm_up_equal_a_fresh_stage(device: str, rng: np.random.Generator) -> None:
    """``warm_up`` (at model load) runs the chain once and leaves no state behind."""
    warmed = Postprocess(Device(device, 0))
    warmed.warm_up()
    frames = rng.integers(0, 256, (2, 90, 160, 3), dtype=np.uint8)
    probability = box_probability(2).astype(np.float16)
    params = BlurParams(blur_sigma=3.0)
    got = warmed(frames, probability, params)
    want = Postprocess(Device(device, 0))(frames, probability, params)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(
            getattr(a, "get", lambda a=a: a)(), getattr(b, "get", lambda b=b: b)()
        )


@pytest.mark.gpu
def test_gpu_warm_up_builds_the_fused_chain_kernels() -> None:
    import cupy

    from bgblur import kernels

    device = int(cupy.cuda.runtime.getDevice())
    kernels.forget_compiled()
    Postprocess(Device("gpu", 0)).warm_up()
    assert {("fused", device), ("gaussian", device)} <= kernels.compiled_modules()


# ---- backgrounds ---------------------------------------------------------------------------


def person_on_grey(batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, probability)``: a saturated red box (the person, columns 160..351, rows
    128..383 of 512x512) on a flat grey wall, and the box's probability (``box_probability``)."""
    frames = np.full((batch, 512, 512, 3), 120, np.uint8)
    frames[:, 128:384, 160:352] = (250, 10, 10)
    return frames, box_probability(batch)


class TestBackgrounds:
    def test_halo_free_blur_keeps_the_persons_colour_out_of_the_background(
        self, postprocess: Postprocess
    ) -> None:
        frames, probability = person_on_grey()
        halo_free, mask = postprocess(frames, probability, BlurParams())
        whole, _ = postprocess(frames, probability, WHOLE_FRAME)
        # A ring 6..30 px outside the box: the mask is 0 there.
        ring = np.zeros(mask.shape, bool)
        ring[:, 98:414, 130:382] = True
        ring[:, 122:390, 154:358] = False
        assert (mask[ring] == 0).all()
        red_glow_whole = whole[..., 0][ring].astype(int) - 120
        red_glow_free = halo_free[..., 0][ring].astype(int) - 120
        assert red_glow_whole.max() > 25  # CV-CUDA's blur: red bleeds into the wall
        assert np.abs(red_glow_free).max() <= 2  # halo-free: the wall stays grey
        assert np.abs(halo_free[ring].astype(int) - 120).max() <= 2

    def test_halo_free_background_is_the_explicit_opencv_formulation(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, rng: np.random.Generator
    ) -> None:
        probability = rng.random((2, 1, 64, 64)).astype(np.float16) ** 3
        blurred, mask = postprocess(astronaut_frames, probability, BlurParams())
        small = reference_halo_free(astronaut_frames, probability, (224, 224), 15, 5.0)
        background = np.stack([cv2.resize(s, (512, 512)) for s in small])
        expected = float_composite(astronaut_frames, background, mask)
        assert np.abs(blurred.astype(int) - expected).max() <= 1
        whole, _ = postprocess(astronaut_frames, probability, WHOLE_FRAME)
        assert (whole != blurred).any()

    @pytest.mark.parametrize("color", [(0, 177, 64), (255, 255, 255), (0, 0, 0)])
    def test_color_background_is_the_colour_where_the_mask_is_0(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, color: tuple
    ) -> None:
        params = BlurParams(background="color", background_color=color)
        blurred, mask = postprocess(astronaut_frames, box_probability(2), params)
        assert (blurred[mask == 0] == color).all()
        np.testing.assert_array_equal(blurred[mask == 255], astronaut_frames[mask == 255])
        soft = (mask > 0) & (mask < 255)
        expected = float_composite(astronaut_frames, np.broadcast_to(color, (2, 512, 512, 3)), mask)
        assert soft.any() and np.abs(blurred.astype(int) - expected).max() <= 1

    @pytest.mark.parametrize("image_hw", [(100, 400), (600, 150), (512, 512)])
    def test_image_background_is_cover_fitted_where_the_mask_is_0(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray, image_hw: tuple
    ) -> None:
        image = cv2.resize(skimage.data.chelsea(), image_hw[::-1])
        params = BlurParams(background="image")
        blurred, mask = postprocess(astronaut_frames, box_probability(2), params, image[None])
        # Cover fit by hand: scale so that the image covers 512x512, centre crop.
        ih, iw = image_hw
        side = min(ih, iw)
        crop = image[(ih - side) // 2 : (ih - side) // 2 + side, (iw - side) // 2 :][:, :side]
        fitted = cv2.resize(crop, (512, 512), interpolation=cv2.INTER_LINEAR)
        for b in range(2):
            np.testing.assert_array_equal(blurred[b][mask[b] == 0], fitted[mask[b] == 0])
        np.testing.assert_array_equal(blurred[mask == 255], astronaut_frames[mask == 255])

    def test_image_background_one_per_frame_or_one_for_all(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray
    ) -> None:
        images = np.stack([skimage.data.chelsea(), skimage.data.coffee()[:300, :451]])
        params = BlurParams(background="image")
        each, mask = postprocess(astronaut_frames, box_probability(2), params, images)
        first, _ = postprocess(astronaut_frames, box_probability(2), params, images[:1])
        broadcast = np.broadcast_to(images[:1], images.shape)
        first_view, _ = postprocess(astronaut_frames, box_probability(2), params, broadcast)
        np.testing.assert_array_equal(each[0], first[0])
        both = (mask[0] == 0) & (mask[1] == 0)  # background in both frames: the same image
        np.testing.assert_array_equal(first[1][both], first[0][both])
        assert (each[1][mask[1] == 0] != first[1][mask[1] == 0]).any()
        np.testing.assert_array_equal(first_view, first)

    @pytest.mark.parametrize(
        ("params", "images", "fragment"),
        [
            (BlurParams(background="image"), None, "background=image needs the BACKGROUND"),
            (BlurParams(), np.zeros((1, 4, 4, 3), np.uint8), "BACKGROUND was sent but"),
            (
                BlurParams(background="color"),
                np.zeros((1, 4, 4, 3), np.uint8),
                "parameter 'background' is 'color'",
            ),
            (
                BlurParams(background="image"),
                np.zeros((3, 4, 4, 3), np.uint8),
                "BACKGROUND batch 3 must be 1",
            ),
            (
                BlurParams(background="image"),
                np.zeros((1, 4, 4, 3), np.float32),
                "BACKGROUND must be uint8",
            ),
            (
                BlurParams(background="image"),
                np.zeros((1, 4, 4, 4), np.uint8),
                "BACKGROUND must have 3 channels",
            ),
            (
                BlurParams(background="image"),
                np.zeros((1, 4321, 4321, 3), np.uint8),
                "BACKGROUND frame of 4321x4321 exceeds",
            ),
        ],
        ids=["missing", "unasked", "with-color", "batch", "dtype", "channels", "too-large"],
    )
    def test_bad_background_is_invalid_input_naming_it(
        self,
        postprocess: Postprocess,
        astronaut_frames: np.ndarray,
        params: BlurParams,
        images: np.ndarray | None,
        fragment: str,
    ) -> None:
        with pytest.raises(InvalidInputError, match=re.escape(fragment)):
            postprocess(astronaut_frames, box_probability(2), params, images)

    def test_foreground_share_is_the_mean_of_the_mask(
        self, postprocess: Postprocess, astronaut_frames: np.ndarray
    ) -> None:
        probability = box_probability(2)
        probability[1] = 0
        outputs = postprocess.outputs(astronaut_frames, probability, BlurParams())
        assert outputs.foreground_share.dtype == np.float32
        assert outputs.foreground_share.shape == (2, 1)
        assert outputs.foreground_share[1, 0] == 0.0
        # The box is 256 x 192 of 512 x 512 (the refinement moves a few edge values only).
        assert abs(outputs.foreground_share[0, 0] - 256 * 192 / 512**2) < 0.005
        np.testing.assert_array_equal(
            outputs.foreground_share[:, 0],
            (outputs.mask.astype(np.float64).mean(axis=(1, 2)) / 255).astype(np.float32),
        )
        blurred, mask = postprocess(astronaut_frames, probability, BlurParams())
        np.testing.assert_array_equal(blurred, outputs.blurred)
        np.testing.assert_array_equal(mask, outputs.mask)
