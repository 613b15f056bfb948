"""CPU twins of the resizes: resize_normalize_nchw, resize_linear_nhwc, upscale_mask.

References: the plain OpenCV call per frame, and a slow NumPy bilinear with half-pixel centres and
clamped borders (OpenCV's INTER_LINEAR convention; its 8-bit path uses fixed-point weights, so
the two agree within 1 LSB). ``interpolation="area"`` (INTER_AREA when both axes shrink): the
OpenCV call, and ``tests/ops/resize_area_reference.py`` (the GPU kernel's arithmetic in NumPy),
which is held to cv2.INTER_AREA here.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from bgblur.ops import (
    resize_linear_nhwc,
    resize_normalize_nchw,
    resize_normalize_nchw_varshape,
    upscale_mask,
)
from tests.ops.resize_area_reference import (
    ENLARGE_CASES,
    SHRINK_CASES,
    area_taps,
    is_area_fast,
    resize_area_accumulate,
    resize_area_u8,
    resize_normalize_nchw_reference,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def random_frames(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def photo_batch() -> np.ndarray:
    """astronaut (512x512) and chelsea (300x451) cropped to the same 300x451, then flipped."""
    astronaut = skimage.data.astronaut()[100:400, 30:481]
    chelsea = skimage.data.chelsea()
    return np.stack([astronaut, chelsea, chelsea[::-1]])


def numpy_bilinear(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize in float64: half-pixel centres, coordinates clamped to the image."""
    out_h, out_w = out_hw
    src = image.astype(np.float64)
    if src.ndim == 2:
        src = src[..., None]

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centre = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, None)
        lo = np.minimum(np.floor(centre).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, centre - np.floor(centre)

    y0, y1, fy = taps(out_h, src.shape[0])
    x0, x1, fx = taps(out_w, src.shape[1])
    fx = fx[None, :, None]
    fy = fy[:, None, None]
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bottom = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    out = top * (1 - fy) + bottom * fy
    return out.reshape((out_h, out_w, *image.shape[2:]))


def normalized_reference(
    frames: np.ndarray, out_hw: tuple[int, int], mean, std, out_dtype
) -> np.ndarray:
    """``(cv2.resize(frame) / 255 - mean) / std`` per frame, in float32, NCHW, then cast."""
    h, w = out_hw
    result = []
    for frame in frames:
        resized = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        normalized = (resized / np.float32(255) - np.float32(mean)) / np.float32(std)
        result.append(normalized.astype(np.float32).transpose(2, 0, 1))
    return np.stack(result).astype(out_dtype)


def assert_within_one_lsb(actual: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(actual.astype(np.int64) - np.rint(expected).astype(np.int64))
    assert diff.max(initial=0) <= 1, f"max difference {diff.max()} LSB"


class TestResizeNormalizeNchw:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("in_hw", [(1, 1), (7, 13)])
    @pytest.mark.parametrize("out_hw", [(1, 1), (13, 7), (64, 64)])
    def test_smoke(
        self,
        rng: np.random.Generator,
        batch: int,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
    ) -> None:
        frames = random_frames(rng, (batch, *in_hw, 3))
        out = resize_normalize_nchw(frames, out_hw, (0.5,) * 3, (0.5,) * 3)
        assert isinstance(out, np.ndarray)
        assert out.shape == (batch, 3, *out_hw)
        assert out.dtype == np.float16

    @pytest.mark.parametrize(
        ("out_dtype", "atol"), [(np.float32, 1e-6), (np.float16, 2e-3)], ids=["fp32", "fp16"]
    )
    @pytest.mark.parametrize("out_hw", [(256, 256), (144, 256), (1, 1), (301, 7)])
    def test_resize_normalize_matches_opencv_then_float_formula(
        self, out_dtype, atol: float, out_hw: tuple[int, int]
    ) -> None:
        frames = photo_batch()
        out = resize_normalize_nchw(
            frames, out_hw, IMAGENET_MEAN, IMAGENET_STD, out_dtype=out_dtype
        )
        expected = normalized_reference(frames, out_hw, IMAGENET_MEAN, IMAGENET_STD, out_dtype)
        assert out.dtype == out_dtype
        np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32), atol=atol)

    @pytest.mark.parametrize(
        ("in_hw", "out_hw"), [((7, 13), (64, 64)), ((7, 13), (1, 1919)), ((40, 33), (9, 17))]
    )
    def test_resize_normalize_matches_numpy_bilinear_formula(
        self, rng: np.random.Generator, in_hw: tuple[int, int], out_hw: tuple[int, int]
    ) -> None:
        frames = random_frames(rng, (3, *in_hw, 3))
        out = resize_normalize_nchw(
            frames, out_hw, IMAGENET_MEAN, IMAGENET_STD, out_dtype=np.float32
        )
        mean = np.array(IMAGENET_MEAN).reshape(3, 1, 1)
        std = np.array(IMAGENET_STD).reshape(3, 1, 1)
        for b in range(3):
            resized = numpy_bilinear(frames[b], out_hw).transpose(2, 0, 1)
            expected = (resized / 255 - mean) / std
            # 1 LSB of the 8-bit resize, in normalized units, plus float32 rounding.
            np.testing.assert_allclose(out[b], expected, atol=1 / (255 * min(IMAGENET_STD)) + 1e-5)

    def test_channels_stay_in_rgb_order_with_their_own_mean_and_std(self) -> None:
        frames = np.zeros((1, 5, 5, 3), np.uint8)
        frames[..., 0] = 255  # pure red
        out = resize_normalize_nchw(
            frames, (3, 3), (0.0, 0.25, 0.5), (1.0, 0.5, 0.25), out_dtype=np.float32
        )
        np.testing.assert_allclose(out[0, 0], 1.0, atol=1e-6)
        np.testing.assert_allclose(out[0, 1], -0.5, atol=1e-6)
        np.testing.assert_allclose(out[0, 2], -2.0, atol=1e-6)

    def test_same_size_only_normalizes_to_minus_one_to_one(self) -> None:
        frames = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
        out = resize_normalize_nchw(frames, (16, 16), (0.5,) * 3, (0.5,) * 3)
        expected = (np.arange(256).reshape(16, 16) / 255 - 0.5) / 0.5
        np.testing.assert_allclose(out[0].astype(np.float64), np.stack([expected] * 3), atol=1e-3)
        assert out[0, :, 0, 0].tolist() == [-1.0] * 3
        assert out[0, :, 15, 15].tolist() == [1.0] * 3

    def test_large_frame_matches_opencv(self, rng: np.random.Generator) -> None:
        frames = random_frames(rng, (1, 1081, 1921, 3))
        out = resize_normalize_nchw(frames, (256, 256), IMAGENET_MEAN, IMAGENET_STD)
        expected = normalized_reference(frames, (256, 256), IMAGENET_MEAN, IMAGENET_STD, np.float16)
        np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32), atol=2e-3)

    @pytest.mark.parametrize("view", ["strided", "bgr_reversed"])
    def test_noncontiguous(self, rng: np.random.Generator, view: str) -> None:
        base = random_frames(rng, (3, 41, 61, 3))
        frames = base[:, 3:40:2, 5:60:3] if view == "strided" else base[..., ::-1]
        assert not frames.flags.c_contiguous
        out = resize_normalize_nchw(frames, (9, 11), IMAGENET_MEAN, IMAGENET_STD)
        expected = normalized_reference(
            np.ascontiguousarray(frames), (9, 11), IMAGENET_MEAN, IMAGENET_STD, np.float16
        )
        np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32), atol=2e-3)

    def test_out_is_honoured(self, rng: np.random.Generator) -> None:
        frames = random_frames(rng, (3, 7, 13, 3))
        out = np.full((3, 3, 9, 11), np.nan, np.float16)
        result = resize_normalize_nchw(frames, (9, 11), IMAGENET_MEAN, IMAGENET_STD, out=out)
        assert result is out
        expected = normalized_reference(frames, (9, 11), IMAGENET_MEAN, IMAGENET_STD, np.float16)
        np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32), atol=2e-3)

    def test_out_may_be_a_strided_view(self, rng: np.random.Generator) -> None:
        frames = random_frames(rng, (2, 7, 13, 3))
        storage = np.zeros((2, 3, 9, 22), np.float32)
        out = storage[..., ::2]
        result = resize_normalize_nchw(
            frames, (9, 11), (0.5,) * 3, (0.5,) * 3, out_dtype=np.float32, out=out
        )
        assert result is out
        expected = normalized_reference(frames, (9, 11), (0.5,) * 3, (0.5,) * 3, np.float32)
        np.testing.assert_allclose(storage[..., ::2], expected, atol=1e-6)
        assert not storage[..., 1::2].any()

    @pytest.mark.parametrize(
        ("out_shape", "out_dtype"),
        [((2, 3, 8, 9), np.float16), ((2, 9, 8, 3), np.float16), ((2, 3, 9, 8), np.float32)],
        ids=["wrong_hw", "nhwc", "wrong_dtype"],
    )
    def test_exception(self, rng: np.random.Generator, out_shape, out_dtype) -> None:
        frames = random_frames(rng, (2, 7, 13, 3))
        with pytest.raises(
            ValueError, match=r"out must have shape \(2, 3, 9, 8\) and dtype float16, got"
        ):
            resize_normalize_nchw(
                frames, (9, 8), (0.5,) * 3, (0.5,) * 3, out=np.empty(out_shape, out_dtype)
            )


class TestResizeLinearNhwc:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("channels", [1, 3, 4])
    @pytest.mark.parametrize(("in_hw", "out_hw"), [((1, 1), (7, 13)), ((7, 13), (1, 1))])
    def test_smoke(
        self,
        rng: np.random.Generator,
        batch: int,
        channels: int,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
    ) -> None:
        frames = random_frames(rng, (batch, *in_hw, channels))
        out = resize_linear_nhwc(frames, out_hw)
        assert out.shape == (batch, *out_hw, channels)
        assert out.dtype == np.uint8

    @pytest.mark.parametrize("out_hw", [(224, 224), (1, 1), (13, 7), (1081, 1921)])
    def test_resize_linear_matches_opencv_per_frame(self, out_hw: tuple[int, int]) -> None:
        frames = photo_batch()
        out = resize_linear_nhwc(frames, out_hw)
        for b, frame in enumerate(frames):
            expected = cv2.resize(frame, out_hw[::-1], interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(out[b], expected)

    @pytest.mark.parametrize("channels", [1, 3])
    @pytest.mark.parametrize(
        ("in_hw", "out_hw"),
        [((7, 13), (1, 1)), ((7, 13), (13, 7)), ((7, 13), (224, 224)), ((7, 13), (1, 1919))],
    )
    def test_resize_linear_matches_numpy_bilinear_formula(
        self,
        rng: np.random.Generator,
        channels: int,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
    ) -> None:
        frames = random_frames(rng, (3, *in_hw, channels))
        out = resize_linear_nhwc(frames, out_hw)
        for b in range(3):
            assert_within_one_lsb(out[b], numpy_bilinear(frames[b], out_hw))

    def test_downscaled_photo_matches_numpy_bilinear_formula(self) -> None:
        frames = photo_batch()
        out = resize_linear_nhwc(frames, (224, 224))
        for b, frame in enumerate(frames):
            assert_within_one_lsb(out[b], numpy_bilinear(frame, (224, 224)))

    def test_same_size_is_identity(self, rng: np.random.Generator) -> None:
        frames = random_frames(rng, (3, 7, 13, 3))
        np.testing.assert_array_equal(resize_linear_nhwc(frames, (7, 13)), frames)

    def test_noncontiguous(self, rng: np.random.Generator) -> None:
        frames = random_frames(rng, (3, 41, 61, 3))[:, 3:40:2, 5:60:3, ::-1]
        assert not frames.flags.c_contiguous
        out = resize_linear_nhwc(frames, (13, 7))
        for b in range(3):
            expected = cv2.resize(np.ascontiguousarray(frames[b]), (7, 13))
            np.testing.assert_array_equal(out[b], expected)

    def test_out_is_honoured(self, rng: np.random.Generator) -> None:
        frames = random_frames(rng, (3, 7, 13, 3))
        storage = np.zeros((3, 9, 11, 6), np.uint8)
        out = storage[..., :3]
        result = resize_linear_nhwc(frames, (9, 11), out=out)
        assert result is out
        for b in range(3):
            np.testing.assert_array_equal(storage[b, ..., :3], cv2.resize(frames[b], (11, 9)))
        assert not storage[..., 3:].any()

    @pytest.mark.parametrize(
        ("out_shape", "out_dtype"),
        [((2, 9, 8, 3), np.uint8), ((2, 9, 8, 1), np.uint8), ((2, 8, 9, 3), np.float32)],
        ids=["wrong_hw", "wrong_channels", "wrong_dtype"],
    )
    def test_exception(self, rng: np.random.Generator, out_shape, out_dtype) -> None:
        frames = random_frames(rng, (2, 7, 13, 3))
        with pytest.raises(
            ValueError, match=r"out must have shape \(2, 8, 9, 3\) and dtype uint8, got"
        ):
            resize_linear_nhwc(frames, (8, 9), out=np.empty(out_shape, out_dtype))


class TestUpscaleMask:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("interpolation", ["nearest", "linear"])
    @pytest.mark.parametrize(("in_hw", "out_hw"), [((1, 1), (7, 13)), ((7, 13), (1, 1))])
    def test_smoke(
        self,
        rng: np.random.Generator,
        batch: int,
        interpolation: str,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
    ) -> None:
        mask = random_frames(rng, (batch, *in_hw))
        out = upscale_mask(mask, out_hw, interpolation=interpolation)
        assert out.shape == (batch, *out_hw)
        assert out.dtype == np.uint8

    def test_default_interpolation_is_nearest(self, rng: np.random.Generator) -> None:
        mask = random_frames(rng, (3, 7, 13))
        np.testing.assert_array_equal(
            upscale_mask(mask, (50, 61)), upscale_mask(mask, (50, 61), interpolation="nearest")
        )

    @pytest.mark.parametrize(
        ("in_hw", "out_hw"),
        [
            ((64, 64), (512, 512)),
            ((1, 1), (7, 13)),
            ((64, 64), (300, 451)),
            ((7, 13), (1081, 1921)),
        ],
    )
    def test_nearest_matches_opencv_and_integer_index_formula(
        self, rng: np.random.Generator, in_hw: tuple[int, int], out_hw: tuple[int, int]
    ) -> None:
        mask = random_frames(rng, (3, *in_hw))
        out = upscale_mask(mask, out_hw, interpolation="nearest")
        (h, w), (big_h, big_w) = in_hw, out_hw
        rows = np.arange(big_h) * h // big_h
        cols = np.arange(big_w) * w // big_w
        for b in range(3):
            expected = cv2.resize(mask[b], (big_w, big_h), interpolation=cv2.INTER_NEAREST)
            np.testing.assert_array_equal(out[b], expected)
            np.testing.assert_array_equal(out[b], mask[b][rows][:, cols])

    def test_nearest_keeps_a_hard_mask_hard(self, rng: np.random.Generator) -> None:
        mask = np.where(rng.random((3, 7, 13)) > 0.5, 255, 0).astype(np.uint8)
        out = upscale_mask(mask, (300, 451))
        assert set(np.unique(out).tolist()) <= {0, 255}

    @pytest.mark.parametrize(
        ("in_hw", "out_hw"), [((64, 64), (512, 512)), ((7, 13), (50, 61)), ((7, 13), (1, 1919))]
    )
    def test_linear_matches_opencv_and_numpy_bilinear_formula(
        self, rng: np.random.Generator, in_hw: tuple[int, int], out_hw: tuple[int, int]
    ) -> None:
        mask = random_frames(rng, (3, *in_hw))
        out = upscale_mask(mask, out_hw, interpolation="linear")
        for b in range(3):
            expected = cv2.resize(mask[b], out_hw[::-1], interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(out[b], expected)
            assert_within_one_lsb(out[b], numpy_bilinear(mask[b], out_hw))

    @pytest.mark.parametrize("interpolation", ["nearest", "linear"])
    def test_noncontiguous(self, rng: np.random.Generator, interpolation: str) -> None:
        mask = random_frames(rng, (3, 41, 61, 2))[:, 3:40:2, ::-3, 1]
        assert not mask.flags.c_contiguous
        out = upscale_mask(mask, (50, 61), interpolation=interpolation)
        flag = cv2.INTER_NEAREST if interpolation == "nearest" else cv2.INTER_LINEAR
        for b in range(3):
            expected = cv2.resize(np.ascontiguousarray(mask[b]), (61, 50), interpolation=flag)
            np.testing.assert_array_equal(out[b], expected)

    def test_out_is_honoured(self, rng: np.random.Generator) -> None:
        mask = random_frames(rng, (3, 7, 13))
        out = np.zeros((3, 50, 61), np.uint8)
        result = upscale_mask(mask, (50, 61), out=out)
        assert result is out
        for b in range(3):
            expected = cv2.resize(mask[b], (61, 50), interpolation=cv2.INTER_NEAREST)
            np.testing.assert_array_equal(out[b], expected)

    @pytest.mark.parametrize("interpolation", ["cubic", "NEAREST", "area", ""])
    def test_exception_bad_interpolation(
        self, rng: np.random.Generator, interpolation: str
    ) -> None:
        with pytest.raises(
            ValueError, match=f"interpolation must be 'nearest' or 'linear', got '{interpolation}'"
        ):
            upscale_mask(random_frames(rng, (1, 7, 13)), (14, 26), interpolation=interpolation)

    @pytest.mark.parametrize(
        ("out_shape", "out_dtype"),
        [((2, 14, 25), np.uint8), ((2, 14, 26, 1), np.uint8), ((2, 14, 26), np.float32)],
        ids=["wrong_hw", "extra_axis", "wrong_dtype"],
    )
    def test_exception(self, rng: np.random.Generator, out_shape, out_dtype) -> None:
        mask = random_frames(rng, (2, 7, 13))
        with pytest.raises(
            ValueError, match=r"out must have shape \(2, 14, 26\) and dtype uint8, got"
        ):
            upscale_mask(mask, (14, 26), out=np.empty(out_shape, out_dtype))


class TestResizeNormalizeNchwVarshape:
    """Frames of different sizes -> one [sum n_i, 3, h, w] batch, each image as if alone."""

    def test_mixed_sizes_equal_each_alone(self, rng: np.random.Generator) -> None:
        batches = [
            random_frames(rng, (2, 1080, 1920, 3)),
            random_frames(rng, (1, 1, 1, 3)),
            random_frames(rng, (3, 33, 66, 3))[:, :, ::-1],  # a strided view
        ]
        out = resize_normalize_nchw_varshape(batches, (144, 256), (0.5,) * 3, (0.25,) * 3)
        assert out.shape == (6, 3, 144, 256) and out.dtype == np.float16
        expected = np.concatenate(
            [resize_normalize_nchw(b, (144, 256), (0.5,) * 3, (0.25,) * 3) for b in batches]
        )
        np.testing.assert_array_equal(out, expected)

    def test_out_and_errors(self, rng: np.random.Generator) -> None:
        batches = [random_frames(rng, (1, 5, 7, 3)), random_frames(rng, (2, 9, 4, 3))]
        out = np.empty((3, 3, 8, 8), np.float32)
        f32 = {"out_dtype": np.float32}
        assert (
            resize_normalize_nchw_varshape(batches, (8, 8), (0,) * 3, (1,) * 3, out=out, **f32)
            is out
        )
        with pytest.raises(ValueError, match="out must have shape"):
            resize_normalize_nchw_varshape(batches, (8, 8), (0,) * 3, (1,) * 3, out=out[:2], **f32)
        with pytest.raises(ValueError, match="at least one frames array"):
            resize_normalize_nchw_varshape([], (8, 8), (0,) * 3, (1,) * 3)


# ---- interpolation="area" ------------------------------------------------------------------------


def case_id(case) -> str:
    (a, b), (c, d) = case
    return f"{a}x{b}-{c}x{d}"


def area_frames(make_frames, src_hw: tuple[int, int]) -> np.ndarray:
    """random, astronaut and chelsea frames of ``src_hw``: ``[5, H, W, 3]`` uint8."""
    return np.concatenate(
        [
            make_frames("random", 1, src_hw),
            make_frames("astronaut", 2, src_hw),
            make_frames("chelsea", 2, src_hw),
        ]
    )


def u8_differences(actual: np.ndarray, expected: np.ndarray) -> tuple[int, int]:
    """(max |difference|, number of differing values) of two uint8 arrays."""
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    return int(diff.max(initial=0)), int(np.count_nonzero(diff))


class TestResizeAreaReference:
    """The NumPy reference of the GPU arithmetic against cv2.INTER_AREA (OpenCV 4.11: bit-exact on
    every value of these cases, and of 600 random size pairs when this was written)."""

    @pytest.mark.parametrize("case", SHRINK_CASES, ids=case_id)
    def test_reference_matches_opencv_inter_area(self, make_frames, case) -> None:
        src_hw, out_hw = case
        frames = area_frames(make_frames, src_hw)
        n_values = n_diff = 0
        for frame in frames:
            expected = cv2.resize(frame, out_hw[::-1], interpolation=cv2.INTER_AREA)
            actual = resize_area_u8(frame, out_hw)
            worst, n = u8_differences(actual, expected.reshape(actual.shape))
            assert worst <= 1, f"{case}: reference differs from cv2.INTER_AREA by {worst} LSB"
            n_values += actual.size
            n_diff += n
        # The kernel's arithmetic is OpenCV's, operation by operation: no value may differ.
        assert n_diff == 0, f"{case}: {n_diff} of {n_values} values differ by 1 LSB from cv2"

    def test_reference_matches_opencv_on_random_sizes(self, rng: np.random.Generator) -> None:
        for _ in range(60):
            src_h, src_w = (int(v) for v in rng.integers(1, 200, 2))
            out_hw = (int(rng.integers(1, src_h + 1)), int(rng.integers(1, src_w + 1)))
            frame = random_frames(rng, (src_h, src_w, 3))
            expected = cv2.resize(frame, out_hw[::-1], interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(
                resize_area_u8(frame, out_hw), expected, err_msg=f"{(src_h, src_w)} -> {out_hw}"
            )

    @pytest.mark.parametrize("case", SHRINK_CASES[:7], ids=case_id)
    def test_general_path_is_the_box_average(self, rng: np.random.Generator, case) -> None:
        """The float sums equal the exact box average: each source pixel weighted by its
        overlap with ``[dx * sx, (dx + 1) * sx) x [dy * sy, (dy + 1) * sy)``, over ``sx * sy``."""
        (src_h, src_w), (h, w) = case
        frame = random_frames(rng, (src_h, src_w, 3))

        def overlap(n: int, d: int) -> np.ndarray:
            edges = np.arange(d + 1) * (n / d)
            lo, hi = edges[:-1, None], edges[1:, None]
            pixels = np.arange(n)[None, :]
            return np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0, None) / (n / d)

        wy, wx = overlap(src_h, h), overlap(src_w, w)
        rows = (frame.transpose(0, 2, 1) / 1.0) @ wx.T  # [H, 3, w]
        exact = (wy @ rows.reshape(src_h, -1)).reshape(h, 3, w).transpose(0, 2, 1)
        np.testing.assert_allclose(resize_area_accumulate(frame, (h, w)), exact, atol=2e-3)

    def test_taps_of_a_non_integer_ratio_and_a_short_last_cell(self) -> None:
        # 7 -> 3: cells [0, 7/3), [7/3, 14/3), [14/3, 7); weights are overlap / (7/3).
        index, weight = area_taps(7, 3)
        assert index.tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
        expected = np.array([[3, 3, 1], [2, 3, 2], [1, 3, 3]]) / 7
        np.testing.assert_allclose(weight, expected, rtol=1e-6)
        # 10 -> 3 (scale 3.33): the last cell is [6.67, 10), cellWidth min(3.33, 10 - 6.67).
        index, weight = area_taps(10, 3)
        np.testing.assert_allclose(weight.sum(axis=1), 1.0, rtol=1e-6)
        assert index[-1, -1] == 9

    def test_integer_ratios_take_the_fast_path(self) -> None:
        assert is_area_fast((512, 512), (256, 256)) == (True, 2, 2)
        assert is_area_fast((1024, 512), (256, 256)) == (True, 4, 2)
        assert is_area_fast((256, 256), (256, 256)) == (True, 1, 1)
        assert not is_area_fast((720, 1280), (256, 256))[0]  # 2.8125 x 5
        assert not is_area_fast((1080, 1920), (256, 256))[0]

    def test_fast_2x2_rounds_half_up_and_others_half_to_even(self) -> None:
        # 2x2 box sums 2 -> (2 + 2) >> 2 = 1 (round half up, OpenCV's SIMD path);
        # a 1x2 box sum of 1 -> cvRound(0.5f) = 0 (half to even).
        frame = np.zeros((2, 2, 3), np.uint8)
        frame[0, 0] = 2
        assert resize_area_u8(frame, (1, 1)).ravel().tolist() == [1, 1, 1]
        assert cv2.resize(frame, (1, 1), interpolation=cv2.INTER_AREA).ravel().tolist() == [1] * 3
        frame = np.zeros((1, 2, 3), np.uint8)
        frame[0, 0] = 1
        assert resize_area_u8(frame, (1, 1)).ravel().tolist() == [0, 0, 0]
        assert cv2.resize(frame, (1, 1), interpolation=cv2.INTER_AREA).ravel().tolist() == [0] * 3

    def test_reference_only_shrinks(self) -> None:
        with pytest.raises(ValueError, match="only shrinks"):
            resize_area_u8(np.zeros((7, 13, 3), np.uint8), (8, 13))


class TestResizeNormalizeArea:
    @pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
    @pytest.mark.parametrize("case", SHRINK_CASES, ids=case_id)
    def test_area_matches_opencv_then_float_formula(self, make_frames, case, dtype) -> None:
        src_hw, out_hw = case
        frames = area_frames(make_frames, src_hw)
        out = resize_normalize_nchw(
            frames, out_hw, IMAGENET_MEAN, IMAGENET_STD, out_dtype=dtype, interpolation="area"
        )
        assert out.dtype == dtype and out.shape == (5, 3, *out_hw)
        h, w = out_hw
        scale = 1.0 / (255.0 * np.asarray(IMAGENET_STD, np.float32))
        bias = -np.asarray(IMAGENET_MEAN, np.float32) / np.asarray(IMAGENET_STD, np.float32)
        for b, frame in enumerate(frames):
            resized = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, 3)
            expected = resized.astype(np.float32) * scale + bias
            np.testing.assert_array_equal(out[b], expected.transpose(2, 0, 1).astype(dtype))
        reference = resize_normalize_nchw_reference(
            frames, out_hw, IMAGENET_MEAN, IMAGENET_STD, out_dtype=dtype
        )
        np.testing.assert_array_equal(out, reference)

    def test_area_differs_from_linear_on_a_large_downscale(self, make_frames) -> None:
        frames = make_frames("astronaut", 1, (1080, 1920))
        area = resize_normalize_nchw(frames, (256, 256), (0,) * 3, (1,) * 3, interpolation="area")
        linear = resize_normalize_nchw(frames, (256, 256), (0,) * 3, (1,) * 3)
        assert np.count_nonzero(area != linear) > area.size // 10

    def test_default_is_linear(self, rng: np.random.Generator) -> None:
        frames = random_frames(rng, (2, 61, 97, 3))
        np.testing.assert_array_equal(
            resize_normalize_nchw(frames, (16, 16), IMAGENET_MEAN, IMAGENET_STD),
            resize_normalize_nchw(
                frames, (16, 16), IMAGENET_MEAN, IMAGENET_STD, interpolation="linear"
            ),
        )

    @pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
    @pytest.mark.parametrize("case", ENLARGE_CASES, ids=case_id)
    def test_enlarging_an_axis_falls_back_to_linear(
        self, rng: np.random.Generator, case, dtype
    ) -> None:
        src_hw, out_hw = case
        frames = random_frames(rng, (2, *src_hw, 3))
        area = resize_normalize_nchw(
            frames, out_hw, IMAGENET_MEAN, IMAGENET_STD, out_dtype=dtype, interpolation="area"
        )
        linear = resize_normalize_nchw(
            frames, out_hw, IMAGENET_MEAN, IMAGENET_STD, out_dtype=dtype, interpolation="linear"
        )
        np.testing.assert_array_equal(area, linear)
        # ... and not cv2's own INTER_AREA, which "emulates" an upscale with bilinear-like taps.
        cv2_area = np.stack(
            [cv2.resize(f, out_hw[::-1], interpolation=cv2.INTER_AREA) for f in frames]
        )
        cv2_linear = np.stack(
            [cv2.resize(f, out_hw[::-1], interpolation=cv2.INTER_LINEAR) for f in frames]
        )
        assert not np.array_equal(cv2_area, cv2_linear)

    def test_noncontiguous_and_out(self, rng: np.random.Generator) -> None:
        frames = random_frames(rng, (3, 301, 461, 4))[:, 5:-3, 7:-2, 2::-1]
        assert not frames.flags.c_contiguous
        storage = np.zeros((3, 3, 97, 262), np.float32)
        out = storage[..., ::2]
        result = resize_normalize_nchw(
            frames,
            (97, 131),
            (0.5,) * 3,
            (0.25,) * 3,
            out_dtype=np.float32,
            out=out,
            interpolation="area",
        )
        assert result is out
        expected = resize_normalize_nchw_reference(
            np.ascontiguousarray(frames), (97, 131), (0.5,) * 3, (0.25,) * 3
        )
        np.testing.assert_array_equal(storage[..., ::2], expected)
        assert not storage[..., 1::2].any()

    @pytest.mark.parametrize("interpolation", ["cubic", "AREA", "nearest", ""])
    def test_exception_bad_interpolation(
        self, rng: np.random.Generator, interpolation: str
    ) -> None:
        frames = random_frames(rng, (1, 7, 13, 3))
        match = f"interpolation must be 'linear' or 'area', got '{interpolation}'"
        with pytest.raises(ValueError, match=match):
            resize_normalize_nchw(frames, (3, 5), (0,) * 3, (1,) * 3, interpolation=interpolation)
        with pytest.raises(ValueError, match=match):
            resize_normalize_nchw_varshape(
                [frames], (3, 5), (0,) * 3, (1,) * 3, interpolation=interpolation
            )


class TestResizeNormalizeVarshapeArea:
    @pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
    def test_mixed_sizes_equal_each_alone(self, rng: np.random.Generator, dtype) -> None:
        batches = [
            random_frames(rng, (2, 1080, 1920, 3)),  # general area
            random_frames(rng, (1, 1, 1, 3)),  # enlarged: linear
            random_frames(rng, (3, 288, 512, 3))[:, :, ::-1],  # 2x2 fast path, a strided view
            random_frames(rng, (1, 100, 1000, 3)),  # enlarged in y only: linear
            random_frames(rng, (1, 576, 1024, 3)),  # 4x4 fast path
        ]
        out = resize_normalize_nchw_varshape(
            batches, (144, 256), IMAGENET_MEAN, IMAGENET_STD, out_dtype=dtype, interpolation="area"
        )
        assert out.shape == (8, 3, 144, 256) and out.dtype == dtype
        expected = np.concatenate(
            [
                resize_normalize_nchw(
                    b,
                    (144, 256),
                    IMAGENET_MEAN,
                    IMAGENET_STD,
                    out_dtype=dtype,
                    interpolation="area",
                )
                for b in batches
            ]
        )
        np.testing.assert_array_equal(out, expected)
        reference = np.concatenate(
            [
                resize_normalize_nchw_reference(
                    b, (144, 256), IMAGENET_MEAN, IMAGENET_STD, out_dtype=dtype
                )
                for b in batches
            ]
        )
        np.testing.assert_array_equal(out, reference)
