"""The registry of segmentation networks: names, lookup, the fixed_ellipse spec."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from bgblur.errors import BgblurError, ModelUnavailableError
from bgblur.models.fixed import FixedEllipse
from bgblur.models.registry import (
    DEFAULT_MODEL,
    SegmentationModelSpec,
    get_model_spec,
    model_names,
)

KNOWN = ["fixed_ellipse", "selfie_general", "selfie_landscape"]


class TestModelNames:
    def test_model_names_are_sorted_and_hold_the_known_networks(self) -> None:
        names = model_names()
        assert names == sorted(names)
        assert set(KNOWN) <= set(names)

    def test_default_model_is_registered(self) -> None:
        assert DEFAULT_MODEL in model_names()


class TestGetModelSpec:
    @pytest.mark.parametrize("name", KNOWN)
    def test_spec_is_named_as_requested_with_sane_conventions(self, name: str) -> None:
        spec = get_model_spec(name)
        assert isinstance(spec, SegmentationModelSpec)
        assert spec.name == name
        h, w = spec.input_hw
        assert isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0
        assert len(spec.mean) == 3 and len(spec.std) == 3
        assert all(s > 0 for s in spec.std)
        assert spec.weights
        assert callable(spec.build)

    def test_fixed_ellipse_spec_maps_pixels_to_minus_one_to_one_at_64x64(self) -> None:
        spec = get_model_spec("fixed_ellipse")
        assert spec.input_hw == (64, 64)
        assert spec.mean == (0.5, 0.5, 0.5)
        assert spec.std == (0.5, 0.5, 0.5)

    def test_fixed_ellipse_builds_an_eval_mode_module_without_touching_the_cache(
        self, tmp_path
    ) -> None:
        module = get_model_spec("fixed_ellipse").build(tmp_path)
        assert isinstance(module, nn.Module) and isinstance(module, FixedEllipse)
        assert not module.training
        assert list(tmp_path.iterdir()) == []
        assert not get_model_spec("fixed_ellipse").build(None).training

    def test_spec_is_frozen(self) -> None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            get_model_spec("fixed_ellipse").input_hw = (1, 1)  # type: ignore[misc]

    @pytest.mark.parametrize("name", ["selfie", "", "FIXED_ELLIPSE", "fixed_ellipse "])
    def test_raises_model_unavailable_for_an_unknown_name_listing_the_known_ones(
        self, name: str
    ) -> None:
        with pytest.raises(
            ModelUnavailableError, match=f"unknown segmentation model '{name}'; known: "
        ) as info:
            get_model_spec(name)
        for known in model_names():
            assert known in str(info.value)
        assert isinstance(info.value, RuntimeError) and isinstance(info.value, BgblurError)
        assert info.value.__cause__ is None and info.value.__suppress_context__
