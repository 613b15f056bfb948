"""CPU twin of probability_to_mask: soft (probability x 255, rounded) and hard (threshold) masks."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur.ops import probability_to_mask


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240612)


def soft_reference(probability_n1hw: np.ndarray) -> np.ndarray:
    """``round(clip(p, 0, 1) * 255)`` in float64."""
    p = probability_n1hw[:, 0].astype(np.float64)
    return np.floor(np.clip(p, 0.0, 1.0) * 255.0 + 0.5)


class TestProbabilityToMask:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (1, 1919)])
    @pytest.mark.parametrize("dtype", [np.float16, np.float32])
    @pytest.mark.parametrize("soft", [True, False])
    def test_smoke(
        self, rng: np.random.Generator, batch: int, hw: tuple[int, int], dtype, soft: bool
    ) -> None:
        probability = rng.random((batch, 1, *hw)).astype(dtype)
        out = probability_to_mask(probability, soft=soft)
        assert isinstance(out, np.ndarray)
        assert out.shape == (batch, *hw)
        assert out.dtype == np.uint8

    def test_soft_mask_maps_each_level_k_over_255_to_k(self) -> None:
        probability = (np.arange(256) / 255).astype(np.float32).reshape(1, 1, 16, 16)
        out = probability_to_mask(probability)
        np.testing.assert_array_equal(out.ravel(), np.arange(256))

    @pytest.mark.parametrize("dtype", [np.float16, np.float32])
    def test_soft_mask_matches_rounded_float_formula(self, rng: np.random.Generator, dtype) -> None:
        probability = rng.uniform(-0.2, 1.2, (3, 1, 7, 13)).astype(dtype)
        out = probability_to_mask(probability, soft=True)
        diff = np.abs(out.astype(np.int64) - soft_reference(probability))
        assert diff.max() <= 1  # float32 rounding at the .5 boundaries only
        assert (diff == 0).mean() > 0.95

    def test_soft_mask_clips_probabilities_outside_0_to_1(self) -> None:
        probability = np.array([-np.inf, -3.0, -1e-3, 1.001, 7.0, np.inf], np.float32)
        out = probability_to_mask(probability.reshape(1, 1, 1, 6))
        assert out.ravel().tolist() == [0, 0, 0, 255, 255, 255]

    @pytest.mark.parametrize("dtype", [np.float16, np.float32])
    def test_hard_mask_is_255_at_and_above_the_threshold(self, dtype) -> None:
        probability = np.array([0.0, 0.25, 0.499, 0.5, 0.501, 0.75, 1.0, 2.0], dtype)
        out = probability_to_mask(probability.reshape(1, 1, 1, 8), soft=False, threshold=0.5)
        assert out.ravel().tolist() == [0, 0, 0, 255, 255, 255, 255, 255]

    @pytest.mark.parametrize("threshold", [0.1, 0.25, 0.9])
    def test_hard_mask_follows_the_threshold(
        self, rng: np.random.Generator, threshold: float
    ) -> None:
        probability = rng.random((3, 1, 7, 13)).astype(np.float32)
        out = probability_to_mask(probability, soft=False, threshold=threshold)
        assert set(np.unique(out).tolist()) <= {0, 255}
        np.testing.assert_array_equal(out == 255, probability[:, 0] >= threshold)

    def test_noncontiguous(self, rng: np.random.Generator) -> None:
        base = rng.random((3, 2, 21, 40)).astype(np.float16)
        probability = base[:, 1:2, ::3, 1::2]
        assert not probability.flags.c_contiguous
        for soft in (True, False):
            out = probability_to_mask(probability, soft=soft)
            expected = probability_to_mask(np.ascontiguousarray(probability), soft=soft)
            np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(
            probability_to_mask(probability, soft=False) == 255, probability[:, 0] >= 0.5
        )

    @pytest.mark.parametrize("soft", [True, False])
    def test_out_is_honoured(self, rng: np.random.Generator, soft: bool) -> None:
        probability = rng.random((3, 1, 7, 13)).astype(np.float32)
        storage = np.full((3, 7, 26), 7, np.uint8)
        out = storage[..., ::2]
        result = probability_to_mask(probability, soft=soft, out=out)
        assert result is out
        if soft:
            expected = soft_reference(probability)
            assert np.abs(storage[..., ::2].astype(np.int64) - expected).max() <= 1
        else:
            np.testing.assert_array_equal(storage[..., ::2] == 255, probability[:, 0] >= 0.5)
        assert (storage[..., 1::2] == 7).all()

    @pytest.mark.parametrize("channels", [0, 2, 3])
    def test_exception_when_there_is_not_exactly_one_channel(
        self, rng: np.random.Generator, channels: int
    ) -> None:
        probability = rng.random((2, channels, 7, 13)).astype(np.float32)
        with pytest.raises(ValueError, match=r"probability must have shape \[B, 1, h, w\], got"):
            probability_to_mask(probability)

    @pytest.mark.parametrize(
        ("out_shape", "out_dtype"),
        [((2, 13, 7), np.uint8), ((2, 1, 7, 13), np.uint8), ((2, 7, 13), np.float32)],
        ids=["transposed", "channel_axis", "wrong_dtype"],
    )
    def test_exception(self, rng: np.random.Generator, out_shape, out_dtype) -> None:
        probability = rng.random((2, 1, 7, 13)).astype(np.float32)
        with pytest.raises(
            ValueError, match=r"out must have shape \(2, 7, 13\) and dtype uint8, got"
        ):
            probability_to_mask(probability, out=np.empty(out_shape, out_dtype))
