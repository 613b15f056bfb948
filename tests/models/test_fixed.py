"""FixedEllipse: probability 1 inside a centred ellipse (semi-axes as fractions of the half-height
and half-width, pixel centres), 0 outside, whatever the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgblur.models.fixed import FixedEllipse


def numpy_ellipse(h: int, w: int, semi_axes: tuple[float, float] = (0.8, 0.6)) -> np.ndarray:
    """In float64: pixel centre (i + 0.5, j + 0.5) mapped to [-1, 1], inside the ellipse."""
    ay, ax = semi_axes
    ys = (np.arange(h) + 0.5) / (h / 2) - 1
    xs = (np.arange(w) + 0.5) / (w / 2) - 1
    return ((ys[:, None] / ay) ** 2 + (xs[None, :] / ax) ** 2 <= 1).astype(np.float64)


class TestFixedEllipse:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (64, 64), (144, 256)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_smoke(self, batch: int, hw: tuple[int, int], dtype: torch.dtype) -> None:
        out = FixedEllipse()(torch.zeros(batch, 3, *hw, dtype=dtype))
        assert out.shape == (batch, 1, *hw)
        assert out.dtype == dtype
        assert out.is_contiguous()

    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (64, 64), (144, 256), (1, 1919), (1081, 1921)])
    def test_output_matches_the_ellipse_formula(self, hw: tuple[int, int]) -> None:
        out = FixedEllipse()(torch.zeros(1, 3, *hw))
        np.testing.assert_array_equal(out[0, 0].numpy(), numpy_ellipse(*hw))

    def test_centre_is_foreground_and_corners_are_background(self) -> None:
        out = FixedEllipse()(torch.zeros(1, 3, 64, 64))[0, 0]
        assert out[31:33, 31:33].eq(1).all()
        assert out[0, 0] == 0 and out[0, -1] == 0 and out[-1, 0] == 0 and out[-1, -1] == 0

    def test_semi_axes_are_fractions_of_half_height_and_half_width(self) -> None:
        # 101 x 201: row 50 and column 100 pass through the exact centre.
        out = FixedEllipse(semi_axes=(0.5, 0.25))(torch.zeros(1, 3, 101, 201))[0, 0]
        centre_row, centre_column = out[50], out[:, 100]
        # |(j + 0.5) / 100.5 - 1| <= 0.25  <=>  75 <= j <= 125
        assert centre_row[75] == 1 and centre_row[125] == 1
        assert centre_row[74] == 0 and centre_row[126] == 0
        assert centre_row.sum() == 51
        # |(i + 0.5) / 50.5 - 1| <= 0.5  <=>  25 <= i <= 75
        assert centre_column[25] == 1 and centre_column[75] == 1
        assert centre_column[24] == 0 and centre_column[76] == 0
        assert centre_column.sum() == 51

    def test_pixels_exactly_on_the_ellipse_count_as_inside(self) -> None:
        # 2 x 1: pixel centres at y = -0.5 and 0.5, x = 0; with semi-axes 0.5 both lie exactly
        # on the ellipse ((0.5 / 0.5)^2 + 0 = 1, exact in float32).
        out = FixedEllipse(semi_axes=(0.5, 0.5))(torch.zeros(1, 3, 2, 1))
        assert out.flatten().tolist() == [1.0, 1.0]

    def test_values_are_0_or_1(self) -> None:
        out = FixedEllipse()(torch.randn(3, 3, 7, 13))
        assert set(out.unique().tolist()) <= {0.0, 1.0}
        assert out.sum() > 0

    def test_ignores_the_pixels(self) -> None:
        model = FixedEllipse()
        torch.manual_seed(0)
        a = model(torch.randn(3, 3, 40, 33))
        b = model(torch.zeros(3, 3, 40, 33))
        c = model(torch.full((3, 3, 40, 33), 1e4))
        assert torch.equal(a, b) and torch.equal(a, c)
        assert torch.equal(a[0], a[2])

    def test_noncontiguous(self) -> None:
        x = torch.zeros(3, 3, 40, 66)[..., ::2]
        assert not x.is_contiguous()
        out = FixedEllipse()(x)
        assert out.shape == (3, 1, 40, 33) and out.is_contiguous()
        np.testing.assert_array_equal(out[1, 0].numpy(), numpy_ellipse(40, 33))

    def test_has_no_parameters_or_buffers(self) -> None:
        model = FixedEllipse()
        assert list(model.parameters()) == []
        assert list(model.buffers()) == []
