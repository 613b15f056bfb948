"""CPU background ops (bgblur.ops.background, bgblur.ops.foreground) against NumPy/OpenCV
formulations written out here: the halo-free blur, the cover fit and the foreground share."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bgblur import ops
from bgblur.ops.background import background_weight, cover_crop, weight_table
from tests.stages.postprocess_reference import reference_halo_free


def blob_probability(batch: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - w / 2) / (0.2 * w)) ** 2))
    noisy = blob[None] + rng.normal(0, 0.05, (batch, h, w))
    return np.clip(noisy, -0.05, 1.05)[:, None].astype(np.float16)


@pytest.mark.parametrize("grow_px", [0, 1, 3])
@pytest.mark.parametrize(("ksize", "sigma"), [(15, 5.0), (1, 1.0), (31, 9.0)])
@pytest.mark.parametrize("prob_hw", [(256, 256), (144, 256), (5, 9)])
def test_halo_free_blur_is_the_opencv_formulation(
    make_frames, grow_px: int, ksize: int, sigma: float, prob_hw: tuple[int, int]
) -> None:
    frames = make_frames("astronaut", 2, (300, 451))
    small = ops.resize_linear_nhwc(frames, (224, 224))
    probability = blob_probability(2, prob_hw)
    got = ops.halo_free_blur(small, probability, ksize, sigma, grow_px=grow_px)
    want = reference_halo_free(frames, probability, (224, 224), ksize, sigma, grow_px=grow_px)
    np.testing.assert_array_equal(got, want)


def test_halo_free_blur_equals_the_plain_blur_without_a_person(make_frames) -> None:
    small = make_frames("chelsea", 2, (224, 224))
    probability = np.zeros((2, 1, 64, 64), np.float32)
    got = ops.halo_free_blur(small, probability, 15, 5.0)
    # w = 255 everywhere: P = frame, G(w) = 255 and 255 G(P) / 255 = G(frame).
    np.testing.assert_array_equal(got, ops.gaussian_blur(small, 15, 5.0))


def test_halo_free_blur_inside_a_person_falls_back_to_the_plain_blur(make_frames) -> None:
    small = make_frames("chelsea", 1, (224, 224))
    probability = np.ones((1, 1, 64, 64), np.float32)  # all person: G(w) = 0
    got = ops.halo_free_blur(small, probability, 15, 5.0)
    np.testing.assert_array_equal(got, ops.gaussian_blur(small, 15, 5.0))


def test_halo_free_blur_excludes_the_person() -> None:
    """A red square person on a grey wall: the background next to it stays grey."""
    small = np.full((1, 224, 224, 3), 100, np.uint8)
    small[:, 80:144, 80:144] = (255, 0, 0)
    probability = np.zeros((1, 1, 224, 224), np.float32)
    probability[:, :, 80:144, 80:144] = 1.0
    got = ops.halo_free_blur(small, probability, 15, 5.0).astype(int)
    plain = ops.gaussian_blur(small, 15, 5.0).astype(int)
    ring = np.zeros((224, 224), bool)
    ring[70:154, 70:154] = True
    ring[80:144, 80:144] = False
    assert plain[0][ring][:, 0].max() > 150  # the whole-frame blur glows red
    assert np.abs(got[0][ring] - 100).max() <= 1


def test_weight_table_is_a_ramp_from_lo_to_hi() -> None:
    table = weight_table(96, 160)
    assert table.dtype == np.uint8 and table.shape == (256,)
    assert (table[:97] == 255).all() and (table[160:] == 0).all()
    assert table[128] == 128  # (160 - 128) * 255 / 64 = 127.5, rounded half up
    assert (np.diff(table.astype(int)) <= 0).all()


def test_background_weight_grows_the_person_by_grow_px() -> None:
    probability = np.zeros((1, 1, 32, 32), np.float32)
    probability[0, 0, 16, 16] = 1.0
    for grow_px in (0, 2):
        weight = background_weight(probability, (32, 32), grow_px, 96, 160)
        zero = np.argwhere(weight[0] == 0)
        assert zero.min(axis=0).tolist() == [16 - grow_px] * 2
        assert zero.max(axis=0).tolist() == [16 + grow_px] * 2


@pytest.mark.parametrize(
    "kwargs",
    [{"grow_px": -1}, {"grow_px": 16}, {"weight_lo": 100, "weight_hi": 100}, {"min_weight": 0}],
)
def test_halo_free_blur_rejects_bad_weight_arguments(kwargs: dict) -> None:
    small = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        ops.halo_free_blur(small, np.zeros((1, 1, 4, 4), np.float32), 3, 1.0, **kwargs)


def test_halo_free_blur_rejects_mismatched_shapes() -> None:
    small = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="batch sizes differ"):
        ops.halo_free_blur(small, np.zeros((1, 1, 4, 4), np.float32), 3, 1.0)
    with pytest.raises(ValueError, match="probability must have shape"):
        ops.halo_free_blur(small, np.zeros((2, 4, 4), np.float32), 3, 1.0)
    with pytest.raises(ValueError, match="odd ksize"):
        ops.halo_free_blur(small, np.zeros((2, 1, 4, 4), np.float32), 4, 1.0)


@pytest.mark.parametrize(
    ("image_hw", "frame_hw", "expected"),
    [
        ((100, 400), (50, 50), (slice(0, 100), slice(150, 250))),  # wide: crop columns
        ((400, 100), (50, 50), (slice(150, 250), slice(0, 100))),  # tall: crop rows
        ((1080, 1920), (1080, 1920), (slice(0, 1080), slice(0, 1920))),
        ((300, 400), (1080, 1920), (slice(37, 262), slice(0, 400))),  # 4:3 into 16:9: 225 rows
        ((10, 10), (1, 1000), (slice(4, 5), slice(0, 10))),  # never empty
    ],
)
def test_cover_crop_keeps_the_frames_aspect_ratio_centred(image_hw, frame_hw, expected) -> None:
    assert cover_crop(image_hw, frame_hw) == expected


def test_cover_resize_is_the_crop_resized_bilinearly(make_frames) -> None:
    images = make_frames("chelsea", 2, (300, 451))
    got = ops.cover_resize_nhwc(images, (200, 200))
    for b in range(2):
        crop = images[b, :, 75:375]
        np.testing.assert_array_equal(got[b], cv2.resize(crop, (200, 200)))
    same = ops.cover_resize_nhwc(images, (300, 451))
    np.testing.assert_array_equal(same, images)
    assert same is not images


def test_solid_color_is_one_pixel_of_the_colour_and_upscales_exactly() -> None:
    like = np.zeros((1, 2, 2, 3), np.uint8)
    pixel = ops.solid_color_nhwc((0, 177, 64), like)
    assert pixel.shape == (1, 1, 1, 3) and pixel.dtype == np.uint8
    up = ops.resize_linear_nhwc(pixel, (37, 53))
    assert (up == (0, 177, 64)).all()


def test_foreground_share_is_the_mean_of_the_mask_over_255() -> None:
    masks = np.zeros((3, 4, 5), np.uint8)
    masks[1] = 255
    masks[2, :2] = 255
    masks[2, 3, 0] = 51
    share = ops.foreground_share(masks)
    assert share.dtype == np.float32 and share.shape == (3, 1)
    np.testing.assert_array_equal(
        share[:, 0], np.array([0.0, 1.0, (10 * 255 + 51) / (20 * 255)], np.float32)
    )
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        ops.foreground_share(np.zeros((4, 5), np.uint8))
