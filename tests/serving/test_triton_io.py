"""The pure parts of the Triton glue: parse_hw, model_parameters, request parameters and
PreparedRequest. (execute_grouped with a stand-in for pb_utils: test_execute_grouped.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from bgblur.errors import InvalidInputError
from bgblur.parameters import BlurParams
from bgblur.server.launcher import MODEL_REPOSITORY
from bgblur.serving.triton_io import (
    PreparedRequest,
    blur_params_from_request,
    model_parameters,
    parse_hw,
    request_parameters,
)


class FakeRequest:
    """What the adapters use of a ``pb_utils.InferenceRequest``: ``parameters()`` -> JSON text."""

    def __init__(self, parameters: str) -> None:
        self._parameters = parameters

    def parameters(self) -> str:
        return self._parameters


def triton_args(config_pbtxt: str) -> dict:
    """``initialize(args)`` as Triton builds it: the model config as JSON, proto field names."""
    config = text_format.Parse(config_pbtxt, model_config_pb2.ModelConfig())
    return {"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True)}


class TestParseHw:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("224x224", (224, 224)),
            ("640x360", (360, 640)),
            ("256X144", (144, 256)),
            ("1x1", (1, 1)),
            ("1919x1", (1, 1919)),
            (" 13 x 7 ", (7, 13)),
            ("7680x4320", (4320, 7680)),
        ],
    )
    def test_parse_hw_reads_width_x_height_and_returns_height_width(
        self, text: str, expected: tuple[int, int]
    ) -> None:
        assert parse_hw(text) == expected

    @pytest.mark.parametrize(
        "text", ["224", "", "x", "axb", "224x", "x224", "1x2x3", "2.5x3", "224*224", "224 224"]
    )
    def test_parse_hw_raises_value_error_when_not_width_x_height(self, text: str) -> None:
        with pytest.raises(ValueError, match=re.escape(f"expected WIDTHxHEIGHT, got '{text}'")):
            parse_hw(text)

    @pytest.mark.parametrize("text", ["0x224", "224x0", "-1x5", "5x-1"])
    def test_parse_hw_raises_value_error_when_a_side_is_not_positive(self, text: str) -> None:
        with pytest.raises(ValueError, match=f"expected a positive WIDTHxHEIGHT, got '{text}'"):
            parse_hw(text)


class TestModelParameters:
    def test_model_parameters_reads_string_values(self) -> None:
        args = triton_args(
            'name: "m" backend: "python" parameters [ '
            '{ key: "a", value: { string_value: "1" } }, '
            '{ key: "b", value: { string_value: "x y" } } ]'
        )
        assert model_parameters(args) == {"a": "1", "b": "x y"}

    def test_model_parameters_is_empty_without_parameters(self) -> None:
        assert model_parameters(triton_args('name: "m" backend: "python"')) == {}
        assert model_parameters({"model_config": json.dumps({"name": "m"})}) == {}

    @pytest.mark.parametrize(
        ("model", "expected"),
        [
            (
                "postprocess",
                {
                    "blur_working_size": "224x224",
                    "mask_interpolation": "nearest",
                    "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
                },
            ),
            (
                "segmentation",
                {
                    "segmentation_model": "selfie_general",
                    "runtime": "auto",
                    "cuda_graph_batch_sizes": "1,2,4,8",
                    "torch_compile": "off",
                    "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
                },
            ),
        ],
    )
    def test_model_parameters_of_the_repository_configs(
        self, model: str, expected: dict[str, str]
    ) -> None:
        text = Path(MODEL_REPOSITORY, model, "config.pbtxt").read_text()
        assert model_parameters(triton_args(text)) == expected

    def test_postprocess_blur_working_size_parses_to_224x224(self) -> None:
        text = Path(MODEL_REPOSITORY, "postprocess", "config.pbtxt").read_text()
        assert parse_hw(model_parameters(triton_args(text))["blur_working_size"]) == (224, 224)


class TestRequestParameters:
    def test_request_parameters_decodes_the_json(self) -> None:
        request = FakeRequest('{"blur_ksize": 7, "soft_mask": "false", "blur_sigma": 2.5}')
        assert request_parameters(request) == {
            "blur_ksize": 7,
            "soft_mask": "false",
            "blur_sigma": 2.5,
        }

    @pytest.mark.parametrize("raw", ["", "{}"])
    def test_request_parameters_is_empty_without_parameters(self, raw: str) -> None:
        assert request_parameters(FakeRequest(raw)) == {}

    def test_blur_params_from_request_applies_the_overrides_to_the_defaults(self) -> None:
        defaults = BlurParams(blur_sigma=3.0)
        request = FakeRequest('{"blur_ksize": "7", "soft_mask": false}')
        assert blur_params_from_request(request, defaults) == BlurParams(
            blur_ksize=7, blur_sigma=3.0, soft_mask=False
        )

    def test_blur_params_from_request_returns_the_defaults_without_parameters(self) -> None:
        defaults = BlurParams(blur_ksize=3)
        assert blur_params_from_request(FakeRequest(""), defaults) is defaults

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ('{"blur_ksize": 4}', "'blur_ksize' must be an odd integer"),
            ('{"blur_ksize": "abc"}', "'blur_ksize' must be of type int, got 'abc'"),
            ('{"no_such": 1}', "unknown parameter 'no_such'"),
        ],
    )
    def test_blur_params_from_request_raises_invalid_input_naming_the_parameter(
        self, raw: str, expected: str
    ) -> None:
        with pytest.raises(InvalidInputError, match=expected):
            blur_params_from_request(FakeRequest(raw), BlurParams())


class TestPreparedRequest:
    @pytest.mark.parametrize("batch", [1, 3])
    def test_batch_is_the_first_dimension_of_the_first_array(self, batch: int) -> None:
        frames = np.zeros((batch, 7, 13, 3), np.uint8)
        probability = np.zeros((batch, 1, 5, 9), np.float16)
        prepared = PreparedRequest(key=(7, 13, 3), arrays=(frames, probability))
        assert prepared.batch == batch
        assert type(prepared.batch) is int
        assert prepared.options is None
        assert prepared.arrays[0] is frames and prepared.arrays[1] is probability

    def test_batch_is_not_an_argument(self) -> None:
        with pytest.raises(TypeError):
            PreparedRequest(key=1, arrays=(np.zeros((1, 2)),), batch=1)  # type: ignore[call-arg]

    def test_options_are_kept(self) -> None:
        params = BlurParams(blur_ksize=3)
        prepared = PreparedRequest(key=("k", params), arrays=(np.zeros((2, 1)),), options=params)
        assert prepared.options is params
        assert prepared.batch == 2
        assert hash(prepared.key) == hash(("k", BlurParams(blur_ksize=3)))
