"""The gRPC guard in front of the real embedded server (CPU): each class of gRPC input that
Triton 2.51 takes wrongly, silently or at the cost of a crash is refused with INVALID_ARGUMENT
(in a stream: an error response, the stream staying open), tritonserver stays the same process
and serves right after; readiness reports the supervisor's view; oversized messages are
RESOURCE_EXHAUSTED; system regions outside the project prefix are PERMISSION_DENIED."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as system_shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from bgblur.server.grpc_guard import GrpcGuard, GrpcGuardSettings
from bgblur.server.launcher import TritonServer, free_port
from bgblur_client.admin_key import admin_headers

MODEL = "background_blur"


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    with TritonServer(device="cpu", segmentation_model="fixed_ellipse") as server:
        yield server


@pytest.fixture(scope="module")
def stub(server: TritonServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.grpc_url, options=[("grpc.max_send_message_length", -1)])
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _request(
    shape: list[int],
    raw: list[bytes] = (),
    uint_contents: list[int] | None = None,
    request_id: str = "",
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL, id=request_id)
    tensor = request.inputs.add(name="FRAMES", datatype="UINT8")
    tensor.shape.extend(shape)
    if uint_contents is not None:
        tensor.contents.uint_contents.extend(uint_contents)
    request.raw_input_contents.extend(raw)
    return request


CASES = {
    # 2^62 * 2^62 * 8 * 3 bytes wraps to 0 in Triton's size check: an empty blob then passed it
    # and killed the preprocess stub.
    "a shape whose byte size wraps to zero": (
        _request([2**62, 2**62, 8, 3], [b""]),
        "elements",
    ),
    "a shape whose byte size overflows": (_request([1, 2**31, 2**31, 3], [b"\0" * 96]), "elements"),
    "a negative size": (_request([1, -5, 8, 3], [b"\0" * 96]), ">= 0"),
    # Triton takes the first and ignores the second blob.
    "a second raw blob for one input": (
        _request([1, 8, 8, 3], [b"\0" * 192, b"\1" * 192]),
        "no input's binary_data_size accounts for",
    ),
    # Triton truncates 300 to 44.
    "a uint8 value over 255": (_request([1, 8, 8, 3], uint_contents=[300] * 192), "300"),
    "too few values": (_request([1, 8, 8, 3], uint_contents=[1] * 10), "10 values"),
    "a blob of the wrong size": (_request([1, 8, 8, 3], [b"\0" * 100]), "needs 192 bytes"),
    "a frame over the frame limits": (_request([1, 9000, 9000, 3], [b""]), "exceeds the maximum"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_request_is_invalid_argument_and_the_server_unharmed(
    stub, unharmed, case: str
) -> None:
    request, expected = CASES[case]
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request, timeout=30)
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in exc.value.details()


def test_valid_raw_and_contents_requests_are_served(stub, unharmed) -> None:
    frames = np.full((1, 8, 8, 3), 7, np.uint8)
    for request in (
        _request([1, 8, 8, 3], [frames.tobytes()]),
        _request([1, 8, 8, 3], uint_contents=frames.ravel().tolist()),
    ):
        response = stub.ModelInfer(request, timeout=30)
        shapes = {o.name: list(o.shape) for o in response.outputs}
        assert shapes["BLURRED"] == [1, 8, 8, 3]


def test_a_bad_request_in_a_stream_gets_an_error_and_the_stream_goes_on(stub, unharmed) -> None:
    good = np.zeros((1, 16, 16, 3), np.uint8)
    requests = [
        _request([2**62, 2**62, 8, 3], [b""], request_id="bad"),
        _request(list(good.shape), [good.tobytes()], request_id="good"),
    ]
    seen = {}
    for response in stub.ModelStreamInfer(iter(requests), timeout=60):
        answer = response.infer_response
        seen[answer.id] = response.error_message or [list(o.shape) for o in answer.outputs]
    assert "elements" in seen["bad"]
    assert [1, 16, 16, 3] in seen["good"]


def test_a_system_region_outside_the_prefix_is_refused_even_with_the_key(server, unharmed) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    handle = system_shm.create_shared_memory_region("elsewhere", "/not_bgblur_region", 64)
    try:
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
            client.register_system_shared_memory(
                "elsewhere", "/not_bgblur_region", 64, headers=admin_headers("grpc")
            )
    finally:
        system_shm.destroy_shared_memory_region(handle)
        client.close()


def _guard_before(server: TritonServer, **settings) -> GrpcGuard:
    """Another guard in front of the same Triton (a setting under test differs)."""
    return GrpcGuard(
        GrpcGuardSettings(
            host="127.0.0.1",
            port=free_port(),
            upstream=f"127.0.0.1:{server.triton_grpc_port}",
            **settings,
        )
    ).start()


def test_readiness_says_what_the_supervisor_says(server) -> None:
    guard = _guard_before(server, ready=lambda: False)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{guard.settings.port}")
        assert client.is_server_live()  # live: answered by Triton
        assert not client.is_server_ready() and not client.is_model_ready(MODEL)
        frames = np.zeros((1, 8, 8, 3), np.uint8)
        tensor = grpcclient.InferInput("FRAMES", list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(frames)
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            client.infer(MODEL, [tensor], client_timeout=30)
        client.close()
    finally:
        guard.stop()
    assert server.is_ready()


def test_an_oversized_message_is_resource_exhausted(server) -> None:
    guard = _guard_before(server, max_message_bytes=1 << 20)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{guard.settings.port}")
        big = np.zeros((1, 720, 1280, 3), np.uint8)  # 2.7 MB
        tensor = grpcclient.InferInput("FRAMES", list(big.shape), "UINT8")
        tensor.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED"):
            client.infer(MODEL, [tensor], client_timeout=30)
        small = np.zeros((1, 64, 64, 3), np.uint8)
        tensor = grpcclient.InferInput("FRAMES", list(small.shape), "UINT8")
        tensor.set_data_from_numpy(small)
        assert client.infer(MODEL, [tensor], client_timeout=30).as_numpy("BLURRED").shape == (
            small.shape
        )
        client.close()
    finally:
        guard.stop()
