"""CPU twin of composite: ``fg * m + bg * (1 - m)`` with ``m = mask / 255``, pinned to the float
formula rounded (within 1 LSB) and, at the extremes, exactly to the inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from bgblur.ops import composite


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240616)


def float_composite(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64) / 255
    return np.rint(fg.astype(np.float64) * m + bg.astype(np.float64) * (1 - m))


def assert_within_one_lsb(actual: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    assert diff.max(initial=0) <= 1, f"max difference {diff.max()} LSB"


def random_inputs(
    rng: np.random.Generator, batch: int, hw: tuple[int, int], channels: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fg = rng.integers(0, 256, (batch, *hw, channels), dtype=np.uint8)
    bg = rng.integers(0, 256, (batch, *hw, channels), dtype=np.uint8)
    mask = rng.integers(0, 256, (batch, *hw), dtype=np.uint8)
    return fg, bg, mask


def test_every_value_triple_equals_the_integer_formula() -> None:
    """All 256^3 (fg, bg, mask) triples: exactly ``(fg*m + bg*(255-m) + 127) // 255``, the
    formula the GPU kernel computes (the CPU twin gets there in uint16 without a division)."""
    values = np.arange(256, dtype=np.uint8)
    fg, bg = (
        np.broadcast_to(v, (256, 256, 256)) for v in (values[:, None, None], values[None, :, None])
    )
    mask = np.broadcast_to(values[None, None, :], (256, 256, 256))
    # [256 fg rows, 256 bg columns x 256 masks] as one image of 1 channel.
    got = composite(
        np.ascontiguousarray(fg).reshape(1, 256, 65536, 1),
        np.ascontiguousarray(bg).reshape(1, 256, 65536, 1),
        np.ascontiguousarray(mask).reshape(1, 256, 65536),
    )
    f, b, m = (a.astype(np.int64) for a in (fg, bg, mask))
    want = (f * m + b * (255 - m) + 127) // 255
    np.testing.assert_array_equal(got.reshape(256, 256, 256), want)


class TestComposite:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (1, 1919)])
    @pytest.mark.parametrize("channels", [1, 3, 4])
    def test_smoke(
        self, rng: np.random.Generator, batch: int, hw: tuple[int, int], channels: int
    ) -> None:
        out = composite(*random_inputs(rng, batch, hw, channels))
        assert isinstance(out, np.ndarray)
        assert out.shape == (batch, *hw, channels)
        assert out.dtype == np.uint8

    @pytest.mark.parametrize(
        ("batch", "hw"),
        [
            (1, (1, 1)),
            (3, (1, 1)),
            (1, (7, 13)),
            (3, (7, 13)),
            (1, (1, 1919)),
            (3, (1, 1919)),
            (1, (1081, 1921)),
        ],
    )
    def test_composite_matches_float_formula(
        self, rng: np.random.Generator, batch: int, hw: tuple[int, int]
    ) -> None:
        fg, bg, mask = random_inputs(rng, batch, hw)
        assert_within_one_lsb(composite(fg, bg, mask), float_composite(fg, bg, mask))

    def test_composite_matches_float_formula_on_a_photo(self) -> None:
        photo = skimage.data.astronaut()
        fg = np.stack([photo, photo[::-1]])
        bg = np.stack([cv2.GaussianBlur(f, (31, 31), 10.0) for f in fg])
        mask = np.zeros(fg.shape[:3], np.uint8)
        for b in range(2):
            cv2.ellipse(mask[b], (256, 256), (150, 200), 0, 0, 360, 255, -1)
            mask[b] = cv2.GaussianBlur(mask[b], (21, 21), 6.0)
        assert_within_one_lsb(composite(fg, bg, mask), float_composite(fg, bg, mask))

    def test_every_foreground_and_mask_level_against_float_formula(self) -> None:
        levels = np.arange(256, dtype=np.uint8)
        fg = np.broadcast_to(levels[None, :, None, None], (1, 256, 256, 3)).copy()
        mask = np.broadcast_to(levels[None, None, :], (1, 256, 256)).copy()
        for background in (0, 17, 128, 255):
            bg = np.full_like(fg, background)
            out = composite(fg, bg, mask)
            assert_within_one_lsb(out, float_composite(fg, bg, mask))
            low, high = np.minimum(fg, bg), np.maximum(fg, bg)
            assert ((out >= low) & (out <= high)).all()  # a convex blend never overshoots

    def test_mask_255_gives_the_foreground_exactly(self, rng: np.random.Generator) -> None:
        fg, bg, _ = random_inputs(rng, 3, (7, 13))
        mask = np.full((3, 7, 13), 255, np.uint8)
        np.testing.assert_array_equal(composite(fg, bg, mask), fg)

    def test_mask_0_gives_the_background_exactly(self, rng: np.random.Generator) -> None:
        fg, bg, _ = random_inputs(rng, 3, (7, 13))
        mask = np.zeros((3, 7, 13), np.uint8)
        np.testing.assert_array_equal(composite(fg, bg, mask), bg)

    def test_half_mask_rounds_half_up(self) -> None:
        # fg 1, bg 0, m = 128/255: 128/255 = 0.502 -> 1; fg 1, bg 0, m = 127/255 = 0.498 -> 0.
        fg = np.ones((1, 1, 2, 1), np.uint8)
        bg = np.zeros_like(fg)
        mask = np.array([[[128, 127]]], np.uint8)
        assert composite(fg, bg, mask).ravel().tolist() == [1, 0]

    def test_noncontiguous(self, rng: np.random.Generator) -> None:
        fg_base, bg_base, mask_base = random_inputs(rng, 3, (41, 61))
        fg = fg_base[:, 3:40:2, 5:60:3]
        bg = bg_base[:, 3:40:2, 5:60:3, ::-1]
        mask = mask_base[:, 20:39, 1:58:3]
        assert not (fg.flags.c_contiguous or bg.flags.c_contiguous or mask.flags.c_contiguous)
        assert_within_one_lsb(composite(fg, bg, mask), float_composite(fg, bg, mask))
        np.testing.assert_array_equal(
            composite(fg, bg, mask),
            composite(*(np.ascontiguousarray(a) for a in (fg, bg, mask))),
        )

    def test_background_broadcast_over_the_batch_and_heights_past_one_step(
        self, rng: np.random.Generator
    ) -> None:
        """One replacement image for every frame (a stride-0 view), at heights that are not a
        multiple of the rows blended per step: the same result as the materialised batch."""
        for height in (129, 300):
            fg, bg, mask = random_inputs(rng, 3, (height, 17))
            broadcast = np.broadcast_to(bg[:1], bg.shape)
            assert broadcast.strides[0] == 0
            got = composite(fg, broadcast, mask)
            np.testing.assert_array_equal(got, composite(fg, np.ascontiguousarray(broadcast), mask))
            assert_within_one_lsb(got, float_composite(fg, broadcast, mask))

    def test_out_is_honoured(self, rng: np.random.Generator) -> None:
        fg, bg, mask = random_inputs(rng, 3, (7, 13))
        storage = np.zeros((3, 7, 26, 3), np.uint8)
        out = storage[:, :, 1::2]
        result = composite(fg, bg, mask, out=out)
        assert result is out
        assert_within_one_lsb(storage[:, :, 1::2], float_composite(fg, bg, mask))
        assert not storage[:, :, ::2].any()

    @pytest.mark.parametrize(
        ("bg_shape", "mask_shape"),
        [
            ((2, 7, 12, 3), (2, 7, 13)),
            ((2, 7, 13, 4), (2, 7, 13)),
            ((1, 7, 13, 3), (2, 7, 13)),
            ((2, 7, 13, 3), (2, 7, 12)),
            ((2, 7, 13, 3), (1, 7, 13)),
            ((2, 7, 13, 3), (2, 7, 13, 1)),
        ],
        ids=["bg_width", "bg_channels", "bg_batch", "mask_width", "mask_batch", "mask_channel"],
    )
    def test_exception_when_shapes_do_not_match(
        self, rng: np.random.Generator, bg_shape: tuple[int, ...], mask_shape: tuple[int, ...]
    ) -> None:
        fg = rng.integers(0, 256, (2, 7, 13, 3), dtype=np.uint8)
        bg = rng.integers(0, 256, bg_shape, dtype=np.uint8)
        mask = rng.integers(0, 256, mask_shape, dtype=np.uint8)
        with pytest.raises(ValueError, match=r"composite needs fg/bg \[B, H, W, C\] and mask"):
            composite(fg, bg, mask)

    @pytest.mark.parametrize(
        ("out_shape", "out_dtype"),
        [((2, 7, 13), np.uint8), ((2, 13, 7, 3), np.uint8), ((2, 7, 13, 3), np.uint16)],
        ids=["no_channel_axis", "transposed", "wrong_dtype"],
    )
    def test_exception(self, rng: np.random.Generator, out_shape, out_dtype) -> None:
        fg, bg, mask = random_inputs(rng, 2, (7, 13))
        with pytest.raises(
            ValueError, match=r"out must have shape \(2, 7, 13, 3\) and dtype uint8, got"
        ):
            composite(fg, bg, mask, out=np.empty(out_shape, out_dtype))
