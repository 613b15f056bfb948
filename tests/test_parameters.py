"""BlurParams (defaults, range checks, per-request overrides as Triton sends them) and
validate_frames_shape (the FRAMES tensor limits)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from bgblur.errors import BgblurError, InvalidInputError
from bgblur.parameters import (
    DEFAULT_BACKGROUND_COLOR,
    MAX_FRAME_LONG_SIDE,
    MAX_FRAME_SHORT_SIDE,
    MAX_REQUEST_BYTES,
    BlurParams,
    validate_frames_shape,
)

FIELD_NAMES = (
    "background, background_color, bilateral_diameter, bilateral_sigma_color, "
    "bilateral_sigma_space, blur_ksize, blur_sigma, halo_free, mask_threshold, soft_mask"
)


class TestBlurParams:
    def test_defaults_follow_the_cvcuda_segmentation_sample(self) -> None:
        params = BlurParams()
        assert params.blur_ksize == 15
        assert params.blur_sigma == 5.0
        assert params.bilateral_diameter == 5
        assert params.bilateral_sigma_color == 50.0
        assert params.bilateral_sigma_space == 1.0
        assert params.soft_mask is True
        assert params.mask_threshold == 0.5

    def test_is_frozen(self) -> None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            BlurParams().blur_ksize = 3  # type: ignore[misc]

    def test_invalid_input_error_is_a_value_error_and_a_bgblur_error(self) -> None:
        with pytest.raises(ValueError) as info:
            BlurParams(blur_ksize=2)
        assert isinstance(info.value, InvalidInputError)
        assert isinstance(info.value, BgblurError)

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("blur_ksize", 1),
            ("blur_ksize", 99),
            ("blur_sigma", 0.01),
            ("bilateral_sigma_space", 0.01),
            ("blur_sigma", 100.0),
            ("bilateral_diameter", 0),
            ("bilateral_diameter", 1),
            ("bilateral_diameter", 31),
            ("bilateral_sigma_color", 1000.0),
            ("bilateral_sigma_space", 100.0),
            ("mask_threshold", 0.001),
            ("mask_threshold", 0.999),
            ("soft_mask", False),
        ],
    )
    def test_constructor_accepts_the_bounds_of_each_range(self, name: str, value: object) -> None:
        assert getattr(BlurParams(**{name: value}), name) == value

    @pytest.mark.parametrize(
        ("name", "value", "expected"),
        [
            ("blur_ksize", 0, r"an odd integer in \[1, 99\], got 0"),
            ("blur_ksize", 2, r"an odd integer in \[1, 99\], got 2"),
            ("blur_ksize", 101, r"an odd integer in \[1, 99\], got 101"),
            ("blur_ksize", -1, r"an odd integer in \[1, 99\], got -1"),
            ("blur_sigma", 0.0, r"in \[0.01, 100\], got 0.0"),
            ("blur_sigma", -1.0, r"in \[0.01, 100\], got -1.0"),
            ("blur_sigma", 100.5, r"in \[0.01, 100\], got 100.5"),
            ("blur_sigma", float("nan"), r"in \[0.01, 100\], got nan"),
            ("blur_sigma", float("inf"), r"in \[0.01, 100\], got inf"),
            ("bilateral_diameter", -1, r"an integer in \[0, 31\], got -1"),
            ("bilateral_diameter", 32, r"an integer in \[0, 31\], got 32"),
            ("bilateral_sigma_color", 0.0, r"in \[0.01, 1000\], got 0.0"),
            ("bilateral_sigma_color", 1000.5, r"in \[0.01, 1000\], got 1000.5"),
            ("bilateral_sigma_color", float("nan"), r"in \[0.01, 1000\], got nan"),
            ("bilateral_sigma_space", 0.0, r"in \[0.01, 100\], got 0.0"),
            ("bilateral_sigma_space", 101.0, r"in \[0.01, 100\], got 101.0"),
            ("bilateral_sigma_space", 5e-324, r"in \[0.01, 100\], got 5e-324"),
            ("blur_sigma", 0.0099, r"in \[0.01, 100\], got 0.0099"),
            ("mask_threshold", 0.0, r"in \(0, 1\), got 0.0"),
            ("mask_threshold", 1.0, r"in \(0, 1\), got 1.0"),
            ("mask_threshold", float("nan"), r"in \(0, 1\), got nan"),
        ],
    )
    def test_constructor_raises_invalid_input_when_a_value_is_out_of_range(
        self, name: str, value: object, expected: str
    ) -> None:
        with pytest.raises(InvalidInputError, match=rf"parameter '{name}' must be {expected}"):
            BlurParams(**{name: value})

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("blur_ksize", 15.0),
            ("blur_ksize", True),
            ("bilateral_diameter", 2.5),
            ("soft_mask", "false"),
            ("blur_sigma", "5"),
        ],
    )
    def test_constructor_raises_invalid_input_when_a_value_has_the_wrong_type(
        self, name: str, value: object
    ) -> None:
        with pytest.raises(InvalidInputError, match=f"parameter '{name}'"):
            BlurParams(**{name: value})


class TestWithOverrides:
    def test_with_overrides_returns_the_same_params_when_there_are_none(self) -> None:
        params = BlurParams(blur_ksize=7)
        assert params.with_overrides({}) is params

    def test_with_overrides_leaves_the_original_untouched(self) -> None:
        params = BlurParams()
        changed = params.with_overrides({"blur_ksize": 3})
        assert changed.blur_ksize == 3
        assert params.blur_ksize == 15
        assert changed == BlurParams(blur_ksize=3)

    def test_with_overrides_applies_several_overrides_at_once(self) -> None:
        changed = BlurParams().with_overrides(
            {"blur_ksize": "9", "blur_sigma": "2.5", "soft_mask": "false", "mask_threshold": 0.3}
        )
        assert changed == BlurParams(
            blur_ksize=9, blur_sigma=2.5, soft_mask=False, mask_threshold=0.3
        )

    @pytest.mark.parametrize(
        ("name", "raw", "expected"),
        [
            ("blur_ksize", "3", 3),
            ("blur_ksize", " 5 ", 5),
            ("blur_ksize", 7, 7),
            ("blur_ksize", 9.0, 9),
            ("blur_sigma", "2.5", 2.5),
            ("blur_sigma", "1e-1", 0.1),
            ("blur_sigma", 3, 3.0),
            ("bilateral_diameter", "0", 0),
            ("bilateral_sigma_color", "75", 75.0),
            ("bilateral_sigma_space", 2, 2.0),
            ("soft_mask", "true", True),
            ("soft_mask", "True", True),
            ("soft_mask", "FALSE", False),
            ("soft_mask", "1", True),
            ("soft_mask", "0", False),
            ("soft_mask", "yes", True),
            ("soft_mask", "no", False),
            ("soft_mask", 1, True),
            ("soft_mask", 0, False),
            ("soft_mask", False, False),
            ("mask_threshold", "0.25", 0.25),
        ],
    )
    def test_with_overrides_converts_triton_strings_and_json_values_to_the_field_type(
        self, name: str, raw: object, expected: object
    ) -> None:
        value = getattr(BlurParams().with_overrides({name: raw}), name)
        assert value == expected
        assert type(value) is type(expected)

    def test_with_overrides_raises_invalid_input_when_the_name_is_unknown(self) -> None:
        message = f"unknown parameter 'blur_size'; known parameters: {FIELD_NAMES}"
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            BlurParams().with_overrides({"blur_size": 3})

    def test_with_overrides_raises_invalid_input_when_one_of_several_names_is_unknown(
        self,
    ) -> None:
        with pytest.raises(InvalidInputError, match="unknown parameter 'sigma'"):
            BlurParams().with_overrides({"blur_ksize": 3, "sigma": 1.0})

    @pytest.mark.parametrize(
        ("name", "raw", "type_name"),
        [
            ("blur_ksize", "abc", "int"),
            ("blur_ksize", "3.5", "int"),
            ("blur_ksize", "", "int"),
            ("blur_ksize", 3.5, "int"),
            ("blur_ksize", True, "int"),
            ("blur_ksize", None, "int"),
            ("blur_ksize", [3], "int"),
            ("blur_ksize", float("inf"), "int"),
            ("blur_ksize", float("nan"), "int"),
            ("bilateral_diameter", False, "int"),
            ("blur_sigma", "abc", "float"),
            ("blur_sigma", "nan", "float"),
            ("blur_sigma", float("nan"), "float"),
            ("blur_sigma", "inf", "float"),
            ("blur_sigma", "-inf", "float"),
            ("blur_sigma", float("inf"), "float"),
            ("blur_sigma", True, "float"),
            ("blur_sigma", None, "float"),
            ("bilateral_sigma_color", "NaN", "float"),
            ("mask_threshold", "half", "float"),
            ("soft_mask", "maybe", "bool"),
            ("soft_mask", "on", "bool"),
            ("soft_mask", "", "bool"),
            ("soft_mask", 2, "bool"),
            ("soft_mask", 0.5, "bool"),
            ("soft_mask", None, "bool"),
        ],
    )
    def test_with_overrides_raises_invalid_input_when_the_value_has_the_wrong_type(
        self, name: str, raw: object, type_name: str
    ) -> None:
        message = f"parameter {name!r} must be of type {type_name}, got {raw!r}"
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            BlurParams().with_overrides({name: raw})

    def test_with_overrides_raises_invalid_input_when_ksize_is_even(self) -> None:
        with pytest.raises(
            InvalidInputError, match=r"'blur_ksize' must be an odd integer in \[1, 99\], got 4"
        ):
            BlurParams().with_overrides({"blur_ksize": "4"})

    @pytest.mark.parametrize(
        ("name", "raw"),
        [
            ("blur_ksize", "101"),
            ("blur_ksize", "-3"),
            ("blur_sigma", "0"),
            ("blur_sigma", "-2.5"),
            ("bilateral_diameter", "-1"),
            ("bilateral_diameter", "32"),
            ("bilateral_sigma_color", "1e4"),
            ("bilateral_sigma_space", "0"),
            ("mask_threshold", "1"),
            ("mask_threshold", 0),
        ],
    )
    def test_with_overrides_raises_invalid_input_when_the_value_is_out_of_range(
        self, name: str, raw: object
    ) -> None:
        with pytest.raises(InvalidInputError, match=rf"parameter '{name}' must be (an|in) "):
            BlurParams().with_overrides({name: raw})


class TestBackgroundParameters:
    def test_defaults_are_the_halo_free_blur_and_a_neutral_grey(self) -> None:
        params = BlurParams()
        assert params.halo_free is True
        assert params.background == "blur"
        assert params.background_color == DEFAULT_BACKGROUND_COLOR == (128, 128, 128)

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("false", False),
            ("0", False),
            (False, False),
            ("true", True),
            (1, True),
        ],
    )
    def test_halo_free_is_a_bool(self, raw: object, expected: bool) -> None:
        assert BlurParams().with_overrides({"halo_free": raw}).halo_free is expected

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [("blur", "blur"), ("color", "color"), ("image", "image"), (" Color ", "color")],
    )
    def test_background_takes_its_three_values_in_any_case(self, raw: str, expected: str) -> None:
        assert BlurParams().with_overrides({"background": raw}).background == expected

    @pytest.mark.parametrize("raw", ["colour", "", "none", "blurred"])
    def test_an_unknown_background_is_invalid_input_listing_the_values(self, raw: str) -> None:
        message = f"parameter 'background' must be one of blur, color, image, got {raw.lower()!r}"
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            BlurParams().with_overrides({"background": raw})

    @pytest.mark.parametrize("raw", [3, True, None, 1.5])
    def test_a_background_that_is_no_string_is_invalid_input(self, raw: object) -> None:
        message = f"parameter 'background' must be of type str, got {raw!r}"
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            BlurParams().with_overrides({"background": raw})

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("0,177,64", (0, 177, 64)),
            (" 255 , 0, 7 ", (255, 0, 7)),
            ("0,0,0", (0, 0, 0)),
            ([1, 2, 3], (1, 2, 3)),
            ((4.0, 5, "6"), (4, 5, 6)),
        ],
    )
    def test_background_color_is_r_g_b(self, raw: object, expected: tuple) -> None:
        value = BlurParams().with_overrides({"background_color": raw}).background_color
        assert value == expected
        assert all(type(v) is int for v in value)

    @pytest.mark.parametrize(
        "raw", ["1,2", "1,2,3,4", "a,b,c", "", "#00ff00", "1.5,2,3", 7, [1, 2, True], None]
    )
    def test_background_color_of_the_wrong_form_is_invalid_input(self, raw: object) -> None:
        message = "parameter 'background_color' must be R,G,B (three integers in [0, 255]), got"
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            BlurParams().with_overrides({"background_color": raw})

    @pytest.mark.parametrize("raw", ["256,0,0", "0,-1,0", "0,0,1000"])
    def test_background_color_out_of_range_is_invalid_input(self, raw: str) -> None:
        with pytest.raises(
            InvalidInputError, match=r"parameter 'background_color' must be R,G,B with each of"
        ):
            BlurParams().with_overrides({"background_color": raw})

    def test_the_constructor_checks_the_new_fields_types(self) -> None:
        with pytest.raises(InvalidInputError, match="'background_color' must be of type"):
            BlurParams(background_color=[1, 2, 3])  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="'halo_free' must be of type bool"):
            BlurParams(halo_free=1)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="'background' must be of type str"):
            BlurParams(background=None)  # type: ignore[arg-type]

    def test_params_with_a_colour_stay_hashable_batch_keys(self) -> None:
        a = BlurParams().with_overrides({"background": "color", "background_color": "1,2,3"})
        b = BlurParams(background="color", background_color=(1, 2, 3))
        assert a == b and hash(a) == hash(b)


class TestValidateFramesShape:
    @pytest.mark.parametrize(
        "shape",
        [
            (1, 1, 1, 3),
            (3, 7, 13, 3),
            (1, 1, 1919, 3),
            (1, MAX_FRAME_SHORT_SIDE, MAX_FRAME_LONG_SIDE, 3),  # 8K landscape
            (1, MAX_FRAME_LONG_SIDE, MAX_FRAME_SHORT_SIDE, 3),  # 8K portrait
            (1, 1, MAX_FRAME_LONG_SIDE, 3),
            (8, 2160, 3840, 3),  # the documented per-request maximum, 8 frames of 4K
            (2, MAX_FRAME_SHORT_SIDE, MAX_FRAME_LONG_SIDE, 3),  # the same byte count
        ],
    )
    def test_accepts_frames_within_the_limits(self, shape: tuple[int, ...]) -> None:
        validate_frames_shape(shape, "uint8")

    def test_the_request_limit_is_eight_4k_frames(self) -> None:
        assert MAX_REQUEST_BYTES == 8 * 3840 * 2160 * 3

    @pytest.mark.parametrize("dtype_name", ["float32", "int8", "uint16", "float16", "bool"])
    def test_raises_invalid_input_when_the_dtype_is_not_uint8(self, dtype_name: str) -> None:
        with pytest.raises(InvalidInputError, match=f"FRAMES must be uint8, got {dtype_name}"):
            validate_frames_shape((1, 7, 13, 3), dtype_name)

    @pytest.mark.parametrize("shape", [(7, 13, 3), (1, 1, 7, 13, 3), (), (3,)])
    def test_raises_invalid_input_when_the_rank_is_not_4(self, shape: tuple[int, ...]) -> None:
        expected = re.escape(f"FRAMES must have shape [batch, height, width, 3], got {list(shape)}")
        with pytest.raises(InvalidInputError, match=expected):
            validate_frames_shape(shape, "uint8")

    @pytest.mark.parametrize("channels", [1, 4, 0])
    def test_raises_invalid_input_when_there_are_not_3_channels(self, channels: int) -> None:
        with pytest.raises(
            InvalidInputError, match=f"FRAMES must have 3 channels \\(RGB\\), got {channels}"
        ):
            validate_frames_shape((1, 7, 13, channels), "uint8")

    @pytest.mark.parametrize("shape", [(0, 7, 13, 3), (1, 0, 13, 3), (1, 7, 0, 3)])
    def test_raises_invalid_input_when_the_tensor_is_empty(self, shape: tuple[int, ...]) -> None:
        with pytest.raises(InvalidInputError, match="FRAMES must not be empty"):
            validate_frames_shape(shape, "uint8")

    @pytest.mark.parametrize(
        "shape",
        [
            (1, 1, MAX_FRAME_LONG_SIDE + 1, 3),
            (1, MAX_FRAME_LONG_SIDE + 1, 1, 3),
            (1, MAX_FRAME_SHORT_SIDE + 1, MAX_FRAME_SHORT_SIDE + 1, 3),
            (1, MAX_FRAME_SHORT_SIDE + 1, MAX_FRAME_LONG_SIDE, 3),
        ],
    )
    def test_raises_invalid_input_when_a_frame_exceeds_8k(self, shape: tuple[int, ...]) -> None:
        with pytest.raises(InvalidInputError, match=r"exceeds the maximum 7680x4320"):
            validate_frames_shape(shape, "uint8")

    @pytest.mark.parametrize(
        "shape", [(9, 2160, 3840, 3), (3, MAX_FRAME_SHORT_SIDE, MAX_FRAME_LONG_SIDE, 3)]
    )
    def test_raises_invalid_input_when_the_request_exceeds_the_byte_limit(
        self, shape: tuple[int, ...]
    ) -> None:
        with pytest.raises(
            InvalidInputError,
            match=f"exceeds the per-request maximum of {MAX_REQUEST_BYTES} bytes; send fewer",
        ):
            validate_frames_shape(shape, "uint8")

    def test_messages_name_the_tensor(self) -> None:
        with pytest.raises(InvalidInputError, match=r"^PROBABILITY must be uint8"):
            validate_frames_shape((1, 7, 13, 3), "float16", "PROBABILITY")


def test_error_messages_shorten_what_the_client_sent() -> None:
    huge = "9" * 50_000_000
    with pytest.raises(InvalidInputError) as info:
        BlurParams().with_overrides({"blur_sigma": huge})
    assert len(str(info.value)) < 200 and "..." in str(info.value)
    with pytest.raises(InvalidInputError) as info:
        BlurParams().with_overrides({"x" * 100_000: 1})
    assert len(str(info.value)) < 400
