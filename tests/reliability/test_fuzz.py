"""Bad input, fuzzed (hypothesis) over gRPC and HTTP: random dtypes, ranks, channel counts, zero
and odd sizes, non-contiguous arrays, wrong or missing tensor names, malformed and out-of-range
parameters. Each request either is valid and served with the right shape, or gets INVALID_ARG
naming the problem; the server stays ready and a valid request right after succeeds.

The oracle for parameters is the library itself: ``BlurParams().with_overrides`` in this process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from bgblur.errors import InvalidInputError
from bgblur.parameters import BlurParams

DTYPES = {
    "UINT8": np.uint8,
    "INT8": np.int8,
    "UINT16": np.uint16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BOOL": np.bool_,
}
INVALID = ("400", "StatusCode.INVALID_ARGUMENT")
FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.fixture(scope="module")
def server(server_pool):
    return server_pool.get("cpu", "fixed_ellipse")


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, server, rel):
    client = rel.make_client(server, request.param)
    yield client
    client.close()


def _module(client: Any) -> Any:
    return grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient


def _send(client: Any, tensors: list[tuple[str, np.ndarray, str]], parameters=None) -> Any:
    module = _module(client)
    inputs = []
    for name, array, datatype in tensors:
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [module.InferRequestedOutput("BLURRED")]
    return client.infer("background_blur", inputs, outputs=outputs, parameters=parameters)


def _healthy_after(server, client, rel) -> None:
    assert server.is_ready()
    good = rel.frames(1, 8, 8)
    assert _send(client, [("FRAMES", good, "UINT8")]).as_numpy("BLURRED").shape == good.shape


shapes = st.lists(st.integers(0, 12), min_size=0, max_size=6).map(tuple) | st.tuples(
    st.integers(0, 10), st.integers(0, 40), st.integers(0, 40), st.sampled_from([1, 2, 3, 4, 3])
)


@FUZZ
@given(
    dtype=st.sampled_from(sorted(DTYPES)),
    shape=shapes,
    name=st.sampled_from(["FRAMES", "FRAMES", "frames", "IMAGES", "NETWORK_INPUT", "MASK"]),
    strided=st.booleans(),
)
def test_fuzzed_frames(server, client, rel, dtype, shape, name, strided) -> None:
    base_shape = (*shape[:-1], shape[-1] * 2) if strided and shape else shape
    array = np.zeros(base_shape, DTYPES[dtype])
    if strided and shape:
        array = array[..., ::2]  # a non-contiguous view
    valid = (
        name == "FRAMES"
        and dtype == "UINT8"
        and len(shape) == 4
        and shape[3] == 3
        and 1 <= shape[0] <= 8
        and min(shape[1:3]) >= 1
    )
    try:
        result = _send(client, [(name, array, dtype)])
    except InferenceServerException as exc:
        assert not valid, exc.message()
        assert exc.status() in INVALID, (exc.status(), exc.message())
        message = exc.message()
        # Names the tensor or the batch problem.
        assert name in message or "batch" in message, message
    else:
        assert valid, f"{name} {dtype} {shape} was served"
        assert result.as_numpy("BLURRED").shape == shape
    _healthy_after(server, client, rel)


FIELDS = ["blur_ksize", "blur_sigma", "bilateral_diameter", "bilateral_sigma_color"]
FIELDS += ["bilateral_sigma_space", "soft_mask", "mask_threshold", "blur_radius", "", "é"]
values = (
    st.integers(-(2**40), 2**40)
    | st.integers(-3, 40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.text(max_size=12)
    | st.sampled_from(["5", "7", "2.5", "true", "no", "nan", "inf", "1e309", "0x10", " 3 "])
)


@FUZZ
@given(parameters=st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=3))
def test_fuzzed_parameters(server, client, rel, parameters) -> None:
    if isinstance(client, httpclient.InferenceServerClient) and any(
        isinstance(v, float) and not np.isfinite(v) for v in parameters.values()
    ):
        parameters = {k: str(v) for k, v in parameters.items()}  # JSON has no nan/inf
    if isinstance(client, grpcclient.InferenceServerClient):
        # gRPC parameters carry bool, int64 and string; larger ints go as strings.
        parameters = {
            k: str(v) if isinstance(v, int) and not -(2**63) <= v < 2**63 else v
            for k, v in parameters.items()
        }
    try:
        BlurParams().with_overrides(parameters)
        expected_error = None
    except InvalidInputError as exc:
        expected_error = str(exc)
    array = rel.frames(1, 12, 12)
    try:
        result = _send(client, [("FRAMES", array, "UINT8")], parameters=parameters)
    except InferenceServerException as exc:
        assert expected_error is not None, (parameters, exc.message())
        assert exc.status() in INVALID, (exc.status(), exc.message())
        assert any(repr(k) in exc.message() for k in parameters), (parameters, exc.message())
    else:
        assert expected_error is None, (parameters, expected_error)
        assert result.as_numpy("BLURRED").shape == array.shape
    _healthy_after(server, client, rel)


def test_missing_and_extra_tensors(server, client, rel) -> None:
    good = rel.frames(1, 8, 8)
    cases = [
        [],
        [("FRAMES", good, "UINT8"), ("FRAMES2", good, "UINT8")],
        [("FRAMES", good, "UINT8"), ("FRAMES", good, "UINT8")],
    ]
    for tensors in cases:
        with pytest.raises(InferenceServerException) as info:
            _send(client, tensors)
        assert info.value.status() in INVALID, info.value.message()
        assert "input" in info.value.message().lower(), info.value.message()
        _healthy_after(server, client, rel)
