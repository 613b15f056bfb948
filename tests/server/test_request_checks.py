"""The HTTP guard's request checks, without a server: each class of body that crashed, starved or
confused Triton's HTTP front end is refused with the right status and a message naming the field;
valid bodies (JSON data, binary data, shared memory) pass; property-based bodies never raise
anything but ``RequestRefusedError``."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgblur.parameters import MAX_REQUEST_BYTES
from bgblur.server.request_checks import (
    RequestLimits,
    RequestRefusedError,
    check_grpc_infer_request,
    check_grpc_shared_memory_key,
    check_inference_body,
    check_shared_memory_registration,
    grpc_infer_header,
    parse_json,
)

LIMITS = RequestLimits()


def _tensor(shape, data=None, **extra) -> dict:
    tensor = {"name": "FRAMES", "shape": shape, "datatype": "UINT8", **extra}
    if data is not None:
        tensor["data"] = data
    return tensor


def _body(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _refused(body: bytes, header_length: str | None = None) -> RequestRefusedError:
    with pytest.raises(RequestRefusedError) as info:
        check_inference_body(body, header_length, LIMITS)
    return info.value


class TestValidBodies:
    def test_json_data_flat_and_nested_pass(self) -> None:
        check_inference_body(_body(_tensor([1, 2, 2, 3], list(range(12)))), None, LIMITS)
        nested = np.arange(12).reshape(1, 2, 2, 3).tolist()
        check_inference_body(_body(_tensor([1, 2, 2, 3], nested)), None, LIMITS)

    def test_binary_data_with_parameters_and_outputs_passes(self) -> None:
        header = json.dumps(
            {
                "id": "r1",
                "parameters": {"blur_ksize": 7, "sequence_id": 5, "sequence_start": True},
                "inputs": [_tensor([2, 4, 4, 3], parameters={"binary_data_size": 96})],
                "outputs": [{"name": "BLURRED", "parameters": {"binary_data": True}}],
            }
        ).encode()
        check_inference_body(header + bytes(96), str(len(header)), LIMITS)

    def test_shared_memory_input_passes(self) -> None:
        tensor = _tensor(
            [1, 8, 8, 3],
            parameters={"shared_memory_region": "bgblur_1_frames", "shared_memory_byte_size": 192},
        )
        check_inference_body(_body(tensor), None, LIMITS)


class TestRefusedBodies:
    def test_an_overflowing_shape_is_refused_before_any_allocation(self) -> None:
        error = _refused(_body(_tensor([1, 2**31, 2**31, 3], list(range(30)))))
        assert error.status == 400 and "declares 13835058055282163712 elements" in error.message

    def test_a_frame_over_the_limits_is_refused_with_the_limit(self) -> None:
        error = _refused(_body(_tensor([1, 9000, 100, 3], parameters={"binary_data_size": 0})))
        assert "exceeds the maximum 7680x4320" in error.message

    @pytest.mark.parametrize("depth", [17, 1000, 2_000_000])
    def test_deep_nesting_is_refused_fast(self, depth: int) -> None:
        started = time.monotonic()
        error = _refused(b"[" * depth)
        assert error.status == 400 and "deeper than 16 levels" in error.message
        assert time.monotonic() - started < 2.0

    def test_brackets_inside_strings_do_not_count_as_nesting(self) -> None:
        value = '[{"' * 50
        assert parse_json(json.dumps({"a": value, "b": '\\"[[['}).encode(), LIMITS)["a"] == value

    @pytest.mark.parametrize("number", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
    def test_non_finite_numbers_are_refused(self, number: str) -> None:
        body = b'{"inputs": [], "parameters": {"blur_sigma": ' + number.encode() + b"}}"
        error = _refused(body)
        assert error.status == 400 and "non-finite" in error.message

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (list(range(11)), "holds 11 values; its shape needs 12"),
            (list(range(13)), "holds more than 12 values; its shape needs 12"),
            ([*range(11), 256], "holds 256, not a UINT8 value"),
            ([*range(11), -1], "holds -1, not a UINT8 value"),
            ([*range(11), 1.5], "holds 1.5, not a UINT8 value"),
            ([*range(11), "a"], "holds 'a', not a UINT8 value"),
            ([*range(11), True], "holds True, not a UINT8 value"),
            ([*range(11), None], "holds None, not a UINT8 value"),
            ([*range(11), {"a": 1}], "not a UINT8 value"),
            ("abc", "'data' must be a JSON array"),
        ],
    )
    def test_malformed_data_is_a_400_naming_the_input(self, data, expected: str) -> None:
        error = _refused(_body(_tensor([1, 2, 2, 3], data)))
        assert error.status == 400 and "input 'FRAMES'" in error.message
        assert expected in error.message

    def test_too_many_parameters_are_refused_fast(self) -> None:
        parameters = {f"p{i}": i for i in range(100_000)}
        started = time.monotonic()
        error = _refused(_body(_tensor([1, 1, 1, 3], [0, 0, 0]), parameters=parameters))
        assert "100000 parameters; at most 64" in error.message
        assert time.monotonic() - started < 2.0

    def test_a_huge_parameter_value_is_refused_without_echoing_it(self) -> None:
        value = "x" * 500_000
        error = _refused(_body(_tensor([1, 1, 1, 3], [0, 0, 0]), parameters={"blur_sigma": value}))
        assert "value of 500000 characters" in error.message and len(error.message) < 300
        # Larger ones exceed the body (or binary header) limit first: 413.
        error = _refused(_body(parameters={"blur_sigma": "x" * 50_000_000}))
        assert error.status == 413 and len(error.message) < 300

    @pytest.mark.parametrize(
        ("parameters", "expected"),
        [
            ({"sequence_id": [1]}, "'sequence_id' must be a string or an integer"),
            ({"sequence_id": -1}, "'sequence_id' must be a string or an integer"),
            ({"sequence_id": 1.5}, "'sequence_id' must be a string or an integer"),
            ({"sequence_start": "yes"}, "'sequence_start' must be true or false"),
            ({"priority": "high"}, "'priority' must be an integer"),
            ({"timeout": -5}, "'timeout' must be an integer"),
            ({"nested": {"a": 1}}, "must be a string, number or boolean"),
        ],
    )
    def test_wrong_typed_triton_parameters_are_a_400(self, parameters, expected: str) -> None:
        error = _refused(_body(_tensor([1, 1, 1, 3], [0, 0, 0]), parameters=parameters))
        assert error.status == 400 and expected in error.message

    @pytest.mark.parametrize(
        ("header_length", "binary", "expected"),
        [
            ("abc", 0, "must be an integer"),
            ("0", 0, "does not fit"),
            ("999999", 0, "does not fit"),
        ],
    )
    def test_a_bad_inference_header_length_is_a_400(self, header_length, binary, expected) -> None:
        error = _refused(_body(_tensor([1, 1, 1, 3], [0, 0, 0])), header_length)
        assert error.status == 400 and expected in error.message

    def test_binary_sizes_must_match_shape_and_body(self) -> None:
        header = _body(_tensor([1, 2, 2, 3], parameters={"binary_data_size": 12}))
        assert "the body holds 4" in _refused(header + bytes(4), str(len(header))).message
        header = _body(_tensor([1, 2, 2, 3], parameters={"binary_data_size": 10}))
        assert "needs 12 bytes" in _refused(header + bytes(10), str(len(header))).message
        header = _body(_tensor([1, 2, 2, 3], parameters={"binary_data_size": 12}))
        error = _refused(header + bytes(20), str(len(header)))
        assert "8 binary bytes that no input" in error.message

    def test_a_json_only_body_over_its_limit_is_a_413(self) -> None:
        error = _refused(b" " * (LIMITS.max_json_body_bytes + 1))
        assert error.status == 413

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (b"[]", "must be a JSON object"),
            (b"{}", "non-empty 'inputs'"),
            (_body({"name": 5, "shape": [1], "datatype": "UINT8"}), "needs a 'name'"),
            (_body({"name": "X", "shape": [1], "datatype": "UINT9"}), "unknown datatype"),
            (_body({"name": "X", "shape": [-1], "datatype": "UINT8"}), "integers >= 0"),
            (_body({"name": "X", "shape": [1], "datatype": "UINT8"}), "carries no data"),
            (_body(_tensor([1, 1, 1, 3], [0] * 3), _tensor([1, 1, 1, 3], [0] * 3)), "twice"),
            (_body(_tensor([1, 1, 1, 3], [0] * 3), id="x" * 1000), "'id' must be a string"),
        ],
    )
    def test_structural_errors_are_a_400(self, body: bytes, expected: str) -> None:
        error = _refused(body)
        assert error.status == 400 and expected in error.message


class TestSharedMemoryRegistration:
    def test_a_project_region_passes(self) -> None:
        body = json.dumps({"key": "/bgblur_12_ab_frames", "offset": 0, "byte_size": 64}).encode()
        check_shared_memory_registration(body, "system", LIMITS)

    @pytest.mark.parametrize(
        "key",
        [
            "/secret",
            "/triton_python_backend_shm_region_abc",
            "bgblur_no_slash",
            "/bgblur_../../etc/shadow",
            None,
            7,
        ],
    )
    def test_any_other_system_region_is_a_403(self, key) -> None:
        body = json.dumps({"key": key, "offset": 0, "byte_size": 64}).encode()
        with pytest.raises(RequestRefusedError) as info:
            check_shared_memory_registration(body, "system", LIMITS)
        assert info.value.status == 403


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    shape=st.lists(st.integers(-3, 2**40), max_size=6),
    data=_json_values,
    datatype=st.sampled_from(["UINT8", "FP32", "BYTES", "BOOL", "X", None]),
    parameters=st.dictionaries(st.text(max_size=12), _json_values, max_size=5),
)
def test_structured_random_bodies_are_checked_or_refused_never_crash(
    shape, data, datatype, parameters
) -> None:
    tensor = {"name": "FRAMES", "shape": shape, "datatype": datatype, "data": data}
    body = json.dumps({"inputs": [tensor], "parameters": parameters}).encode()
    try:
        check_inference_body(body, None, LIMITS)
    except RequestRefusedError as exc:
        assert exc.status in (400, 413) and exc.message
        return
    # What passes is well formed: a frames tensor within the limits, its data complete.
    assert len(shape) == 4 and np.prod(shape, dtype=object) * 1 <= MAX_REQUEST_BYTES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.one_of(st.none(), st.integers(-5, 600).map(str)))
def test_random_bytes_are_refused_never_crash(body: bytes, header_length) -> None:
    try:
        check_inference_body(body, header_length, LIMITS)
    except RequestRefusedError as exc:
        assert exc.status in (400, 413)


# --------------------------------------------------------------------------------------------
# gRPC ModelInferRequest
# --------------------------------------------------------------------------------------------


def _grpc_request(shape, raw=(), contents=None, datatype="UINT8", shm=False):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="background_blur")
    tensor = request.inputs.add(name="FRAMES", datatype=datatype)
    tensor.shape.extend(shape)
    if contents is not None:
        field, values = contents
        getattr(tensor.contents, field).extend(values)
    if shm:
        tensor.parameters["shared_memory_region"].string_param = "bgblur_in"
        tensor.parameters["shared_memory_byte_size"].int64_param = 192
    request.raw_input_contents.extend(raw)
    return request


class TestGrpcInferRequest:
    def test_raw_blobs_become_binary_sizes_in_order(self) -> None:
        header, raw_bytes = grpc_infer_header(_grpc_request([1, 8, 8, 3], [b"\0" * 192]))
        assert raw_bytes == 192
        assert header["inputs"][0]["parameters"]["binary_data_size"] == 192
        check_grpc_infer_request(_grpc_request([1, 8, 8, 3], [b"\0" * 192]), LIMITS)

    def test_shared_memory_and_contents_inputs_take_no_blob(self) -> None:
        check_grpc_infer_request(_grpc_request([1, 8, 8, 3], shm=True), LIMITS)
        check_grpc_infer_request(
            _grpc_request([1, 8, 8, 3], contents=("uint_contents", [255] * 192)), LIMITS
        )
        with pytest.raises(RequestRefusedError, match="no input's binary_data_size"):
            check_grpc_infer_request(_grpc_request([1, 8, 8, 3], [b"\0" * 192], shm=True), LIMITS)

    @pytest.mark.parametrize(
        ("request_args", "expected"),
        [
            (([2**62, 2**62, 8, 3], [b""]), "elements"),
            (([1, -1, 8, 3], [b""]), ">= 0"),
            (([1, 8, 8, 3], [b"\0" * 192, b"\0" * 192]), "accounts for"),
            (([1, 8, 8, 3], [b"\0" * 191]), "needs 192 bytes"),
        ],
    )
    def test_shapes_and_blobs(self, request_args, expected: str) -> None:
        with pytest.raises(RequestRefusedError, match=expected):
            check_grpc_infer_request(_grpc_request(*request_args), LIMITS)

    @pytest.mark.parametrize(
        ("datatype", "contents", "expected"),
        [
            ("UINT8", ("uint_contents", [256] * 192), "256, not a UINT8"),
            ("INT8", ("int_contents", [-129] * 192), "-129, not a INT8"),
            ("UINT8", ("uint_contents", [1] * 191), "191 values"),
            ("UINT8", ("fp32_contents", [1.0] * 192), "carries contents in fp32_contents"),
        ],
    )
    def test_contents_values_within_their_datatype(self, datatype, contents, expected) -> None:
        request = _grpc_request([1, 8, 8, 3], contents=contents, datatype=datatype)
        with pytest.raises(RequestRefusedError, match=expected):
            check_grpc_infer_request(request, LIMITS)

    def test_parameters_are_checked_as_over_http(self) -> None:
        request = _grpc_request([1, 8, 8, 3], [b"\0" * 192])
        for index in range(LIMITS.max_parameters + 1):
            request.parameters[f"p{index}"].string_param = "x"
        with pytest.raises(RequestRefusedError, match="parameters; at most"):
            check_grpc_infer_request(request, LIMITS)
        request = _grpc_request([1, 8, 8, 3], [b"\0" * 192])
        request.parameters["sequence_id"].bool_param = True
        with pytest.raises(RequestRefusedError, match="sequence_id"):
            check_grpc_infer_request(request, LIMITS)

    def test_system_region_keys(self) -> None:
        check_grpc_shared_memory_key("/bgblur_frames_0")
        for key in ("/etc_passwd", "/triton_python_backend_shm_region_1", "/bgblur_/../x"):
            with pytest.raises(RequestRefusedError):
                check_grpc_shared_memory_key(key)
