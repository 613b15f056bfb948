"""The real Triton server serving the ensemble, over gRPC and HTTP, on the CPU (and the GPU).

Each test runs per protocol; the ``gpu`` variants start the server with KIND_GPU instances and
skip themselves without CUDA (``make test-gpu``).
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bgblur.device import Device
from bgblur.models.registry import DEFAULT_MODEL
from bgblur.parameters import BlurParams
from bgblur.pipeline import BackgroundBlurPipeline
from bgblur.server.launcher import TritonServer

PROTOCOLS = ["grpc", "http"]
MODEL = "background_blur"


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


def client_for(server: TritonServer, protocol: str) -> Any:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient.InferenceServerClient(
        server.http_url, connection_timeout=120, network_timeout=120
    )


@pytest.fixture
def client_factory():
    clients: list[Any] = []

    def make(server: TritonServer, protocol: str) -> Any:
        clients.append(client_for(server, protocol))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def infer(
    client: Any,
    frames: np.ndarray,
    *,
    outputs: tuple[str, ...] = ("BLURRED",),
    parameters: dict[str, Any] | None = None,
    input_name: str = "FRAMES",
    datatype: str = "UINT8",
) -> dict[str, np.ndarray]:
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    tensor = module.InferInput(input_name, list(frames.shape), datatype)
    tensor.set_data_from_numpy(frames)
    result = client.infer(
        MODEL,
        [tensor],
        outputs=[module.InferRequestedOutput(name) for name in outputs],
        parameters=parameters,
    )
    return {name: result.as_numpy(name) for name in outputs}


def assert_invalid_arg(error: InferenceServerException, protocol: str, *fragments: str) -> None:
    expected_status = "StatusCode.INVALID_ARGUMENT" if protocol == "grpc" else "400"
    assert error.status() == expected_status, (error.status(), error.message())
    for fragment in fragments:
        assert fragment in error.message(), (fragment, error.message())


def random_frames(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


_PIPELINES: dict[tuple[str, str], BackgroundBlurPipeline] = {}
# Served and in-process networks run in different processes: on the GPU both must use cuDNN's
# deterministic kernel choice (not per-process autotuning) to agree to 1 LSB. The launcher passes
# the environment on to the server's model processes.
os.environ["BGBLUR_CUDNN_DETERMINISTIC"] = "1"


@pytest.fixture
def in_process(device: str):
    """The library's pipeline in this process, on the same device as the server under test
    (``run(frames, params, model=DEFAULT_MODEL)``)."""

    def run(
        frames: np.ndarray, params: BlurParams, model: str = DEFAULT_MODEL
    ) -> tuple[np.ndarray, np.ndarray]:
        key = (device, model)
        if key not in _PIPELINES:
            _PIPELINES[key] = BackgroundBlurPipeline(model, Device(device, 0))
        blurred, mask = _PIPELINES[key](frames, params)
        if device == "gpu":
            blurred, mask = blurred.get(), mask.get()
        return blurred, mask

    return run


def test_blurred_has_the_frames_shape_and_dtype(server_pool, device, protocol, client_factory):
    client = client_factory(server_pool.get(device), protocol)
    frames = random_frames(2, 90, 161)
    out = infer(client, frames, outputs=("BLURRED", "MASK"))
    assert out["BLURRED"].shape == frames.shape and out["BLURRED"].dtype == np.uint8
    assert out["MASK"].shape == frames.shape[:3] and out["MASK"].dtype == np.uint8


def test_served_result_equals_in_process_result(
    server_pool, device, protocol, client_factory, in_process, astronaut_frames
):
    client = client_factory(server_pool.get(device), protocol)
    params = {"blur_sigma": 4.0, "bilateral_diameter": 7}
    out = infer(client, astronaut_frames, outputs=("BLURRED", "MASK"), parameters=params)
    blurred, mask = in_process(astronaut_frames, BlurParams().with_overrides(params))
    assert np.abs(out["BLURRED"].astype(int) - blurred).max() <= 1
    assert np.abs(out["MASK"].astype(int) - mask).max() <= 1


def test_seed_network_serves_and_equals_in_process(
    server_pool, device, protocol, client_factory, in_process, astronaut_frames
):
    """The reference's fcn_resnet101 (random fp16-safe weights without the pretrained file: same
    deterministic init in the server and here) serves the ensemble: its 224x224 input through
    preprocess, 21-class softmax -> the person probability, postprocess at the frame size."""
    client = client_factory(server_pool.get(device, "fcn_resnet101"), protocol)
    frames = astronaut_frames[:1, ::2, ::2].copy()  # one 256x256 frame keeps the CPU run short
    out = infer(client, frames, outputs=("BLURRED", "MASK"))
    blurred, mask = in_process(frames, BlurParams(), model="fcn_resnet101")
    assert out["BLURRED"].shape == frames.shape and out["MASK"].shape == frames.shape[:3]
    assert np.abs(out["BLURRED"].astype(int) - blurred).max() <= 1
    assert np.abs(out["MASK"].astype(int) - mask).max() <= 1
    # A softmax probability is not a constant: the mask has structure (whatever the weights).
    assert int(mask.max()) - int(mask.min()) > 0


def test_area_input_through_a_model_parameter(
    server_pool, client_factory, astronaut_frames
) -> None:
    """``resize_interpolation=area`` (launcher ``model_parameters``) reaches preprocess: the
    served masks equal the in-process pipeline's with area input and differ from bilinear."""
    frames = np.stack(
        [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_CUBIC) for f in astronaut_frames]
    )
    with TritonServer(device="cpu", model_parameters={"resize_interpolation": "area"}) as server:
        served = infer(client_factory(server, "grpc"), frames, outputs=("MASK",))["MASK"]
    area = BackgroundBlurPipeline(DEFAULT_MODEL, Device("cpu"), resize_interpolation="area")
    _, want = area(frames, BlurParams())
    assert np.abs(served.astype(int) - want).max() <= 1
    linear_client = client_factory(server_pool.get("cpu", DEFAULT_MODEL), "grpc")
    linear = infer(linear_client, frames, outputs=("MASK",))["MASK"]
    assert np.abs(served.astype(int) - linear).max() > 1


def test_known_foreground_stays_sharp_and_background_is_blurred(
    server_pool, device, protocol, client_factory
):
    client = client_factory(server_pool.get(device, "fixed_ellipse"), protocol)
    frames = random_frames(1, 240, 320, seed=3)
    out = infer(client, frames, outputs=("BLURRED", "MASK"))
    blurred, mask = out["BLURRED"][0], out["MASK"][0]
    # fixed_ellipse: probability 1 inside a centred ellipse (semi-axes 0.8 x 0.6), 0 outside.
    centre = (slice(100, 140), slice(140, 180))
    corner = (slice(0, 20), slice(0, 20))
    assert (mask[centre] == 255).all() and (mask[corner] == 0).all()
    np.testing.assert_array_equal(blurred[centre], frames[0][centre])
    detail_in = np.abs(np.diff(frames[0][corner].astype(int), axis=1)).mean()
    detail_out = np.abs(np.diff(blurred[corner].astype(int), axis=1)).mean()
    assert detail_out < detail_in / 10, (detail_in, detail_out)


def test_request_parameters_change_the_result(server_pool, device, protocol, client_factory):
    client = client_factory(server_pool.get(device, "fixed_ellipse"), protocol)
    frames = random_frames(1, 64, 96, seed=5)
    soft = infer(client, frames, outputs=("MASK",))["MASK"]
    weak = infer(client, frames, parameters={"blur_sigma": 0.5, "blur_ksize": 3})["BLURRED"]
    strong = infer(client, frames, parameters={"blur_sigma": 20.0, "blur_ksize": 31})["BLURRED"]
    assert not np.array_equal(weak, strong)
    hard = infer(client, frames, outputs=("MASK",), parameters={"soft_mask": False})["MASK"]
    assert set(np.unique(hard)) <= set(np.unique(soft)) | {0, 255}


def test_frames_of_different_sizes_in_concurrent_requests(
    server_pool, device, protocol, client_factory
):
    """Requests of different frame sizes that the dynamic batcher may put into one preprocess
    execution (one variable-shape launch, no concatenation): each result equals the result of
    the same request sent alone."""
    server = server_pool.get(device, "fixed_ellipse")
    sizes = [(48, 64), (49, 65), (120, 80), (1, 1), (48, 64), (33, 17)] * 2
    requests = [random_frames(2, *size, seed=i) for i, size in enumerate(sizes)]
    alone_client = client_for(server, protocol)
    alone = [infer(alone_client, frames)["BLURRED"] for frames in requests]
    alone_client.close()

    def run(frames: np.ndarray) -> np.ndarray:
        client = client_for(server, protocol)
        try:
            return infer(client, frames)["BLURRED"]
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(len(sizes)) as pool:
        for i, got in enumerate(pool.map(run, requests)):
            assert got.shape == requests[i].shape
            np.testing.assert_array_equal(got, alone[i], err_msg=f"request {i} {sizes[i]}")


BAD_PARAMETERS = [
    ({"blur_ksize": 4}, "blur_ksize"),
    ({"blur_sigma": -1.0}, "blur_sigma"),
    ({"blur_sigma": "strong"}, "blur_sigma"),
    ({"bilateral_diameter": 99}, "bilateral_diameter"),
    ({"mask_threshold": 1.5}, "mask_threshold"),
    ({"soft_mask": "maybe"}, "soft_mask"),
    ({"blur_radius": 3}, "unknown parameter 'blur_radius'"),
]


@pytest.mark.parametrize(("parameters", "fragment"), BAD_PARAMETERS)
def test_bad_parameter_is_invalid_arg(server_pool, protocol, client_factory, parameters, fragment):
    client = client_factory(server_pool.get("cpu", "fixed_ellipse"), protocol)
    with pytest.raises(InferenceServerException) as info:
        infer(client, random_frames(1, 16, 16), parameters=parameters)
    assert_invalid_arg(info.value, protocol, fragment)


BAD_FRAMES = [
    # (frames, datatype, input name, message fragments)
    (np.zeros((1, 16, 16, 3), np.float32), "FP32", "FRAMES", ["FRAMES", "FP32"]),
    (np.zeros((2, 16, 3), np.uint8), "UINT8", "FRAMES", ["FRAMES", "shape"]),
    # Over HTTP the guard names the channel count, over gRPC Triton the shape: both say "got".
    (np.zeros((1, 16, 16, 4), np.uint8), "UINT8", "FRAMES", ["FRAMES", "4"]),
    (np.zeros((1, 16, 16, 1), np.uint8), "UINT8", "FRAMES", ["FRAMES", "1"]),
    (np.zeros((1, 0, 16, 3), np.uint8), "UINT8", "FRAMES", ["FRAMES must not be empty"]),
    (np.zeros((1, 1, 7681, 3), np.uint8), "UINT8", "FRAMES", ["exceeds the maximum 7680x4320"]),
    (np.zeros((1, 4321, 4321, 3), np.uint8), "UINT8", "FRAMES", ["exceeds the maximum"]),
    (np.zeros((9, 4, 4, 3), np.uint8), "UINT8", "FRAMES", ["batch-size must be <= 8"]),
    (np.zeros((1, 16, 16, 3), np.uint8), "UINT8", "IMAGES", ["IMAGES"]),
]


@pytest.mark.parametrize(
    ("frames", "datatype", "name", "fragments"),
    BAD_FRAMES,
    ids=[
        "fp32",
        "no-batch-dim",
        "4-channels",
        "1-channel",
        "empty",
        "too-wide",
        "too-big",
        "batch-9",
        "wrong-name",
    ],
)
def test_bad_frames_are_invalid_arg_and_server_stays_healthy(
    server_pool, protocol, client_factory, frames, datatype, name, fragments
):
    server = server_pool.get("cpu", "fixed_ellipse")
    client = client_factory(server, protocol)
    with pytest.raises(InferenceServerException) as info:
        infer(client, frames, datatype=datatype, input_name=name)
    assert_invalid_arg(info.value, protocol, *fragments)
    assert server.is_ready()
    good = random_frames(1, 16, 16)
    assert infer(client, good)["BLURRED"].shape == good.shape


def test_bad_requests_do_not_affect_concurrent_good_ones(server_pool, protocol):
    server = server_pool.get("cpu", "fixed_ellipse")
    frames = random_frames(1, 32, 32)

    def run(index: int) -> str:
        client = client_for(server, protocol)
        try:
            parameters = {"blur_ksize": 4} if index % 2 else None
            infer(client, frames, parameters=parameters)
            return "ok"
        except InferenceServerException as exc:
            return exc.message()
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(16)))
    assert results[0::2] == ["ok"] * 8
    assert all("blur_ksize" in r for r in results[1::2])


def test_every_model_is_ready(server_pool, device, protocol, client_factory):
    client = client_factory(server_pool.get(device), protocol)
    assert client.is_server_live() and client.is_server_ready()
    for model in ("background_blur", "preprocess", "segmentation", "postprocess"):
        assert client.is_model_ready(model), model


def _python_backend_shm() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if "triton_python_backend" in name}


def test_server_stops_cleanly_after_serving():
    server = TritonServer(device="cpu", segmentation_model="fixed_ellipse")
    with server:
        client = client_for(server, "grpc")
        assert infer(client, random_frames(1, 8, 8))["BLURRED"].shape == (1, 8, 8, 3)
        client.close()
        process = server._process
        assert process is not None
    assert process.poll() == 0
    assert not server.is_ready()
    # None of this launch's stub regions is left (other servers on the host have their own).
    assert not {n for n in _python_backend_shm() if n.startswith(server.stub_shm_prefix)}
    assert not server.log_path.parent.exists()  # a clean stop leaves no temporary folder


@pytest.mark.parametrize("shared_memory", ["system", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_shared_memory_transport_equals_raw_and_frees_its_regions(
    server_pool, device, protocol, shared_memory
):
    from bgblur_client.admin_key import admin_headers_for
    from bgblur_client.transport import BlurClient

    if shared_memory == "cuda" and device != "gpu":
        pytest.skip("CUDA shared memory is measured against the GPU server")
    server = server_pool.get(device, "fixed_ellipse")
    url = server.grpc_url if protocol == "grpc" else server.http_url
    frames = random_frames(3, 72, 97, seed=11)
    with BlurClient(url, protocol=protocol) as raw:
        expected = raw.blur(frames, want_mask=True)
    with BlurClient(url, protocol=protocol, shared_memory=shared_memory) as client:
        for batch in (frames, frames[:1], np.concatenate([frames, frames])):  # regions grow
            got = client.blur(batch, want_mask=True)
            rows = min(len(batch), 3)
            np.testing.assert_array_equal(
                got.blurred_nhwc_u8[:rows], expected.blurred_nhwc_u8[:rows]
            )
            np.testing.assert_array_equal(got.mask_nhw_u8[:rows], expected.mask_nhw_u8[:rows])
        headers = admin_headers_for(client._client)  # the status is a restricted API
        status = (
            client._client.get_system_shared_memory_status(headers=headers)
            if shared_memory == "system"
            else client._client.get_cuda_shared_memory_status(headers=headers)
        )
        assert "bgblur_" in str(status)
    mine = f"bgblur_{os.getpid()}_"  # the client library's regions of this process
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(mine)]


def test_auto_shared_memory_takes_what_the_local_server_maps(server_pool, device, protocol):
    """``shared_memory="auto"`` with a server on this host: CUDA shared memory where CuPy sees
    a GPU here and the server maps it (the GPU server), else system shared memory; the probe's
    region is not left registered; the answers equal the raw transport's."""
    from bgblur.device import cuda_device_count
    from bgblur_client.admin_key import admin_headers_for
    from bgblur_client.transport import BlurClient

    server = server_pool.get(device, "fixed_ellipse")
    url = server.grpc_url if protocol == "grpc" else server.http_url
    frames = random_frames(2, 40, 56, seed=5)
    with BlurClient(url, protocol=protocol) as raw:
        expected = raw.blur(frames).blurred_nhwc_u8

    with BlurClient(url, protocol=protocol, shared_memory="auto") as client:
        if device == "gpu":
            assert client.shared_memory == "cuda", client.shared_memory_reason
        elif cuda_device_count() == 0:
            assert client.shared_memory == "system", client.shared_memory_reason
            assert "cuda: no CUDA GPU for CuPy here" not in client.shared_memory_reason
        else:  # a GPU here and the CPU server: whichever it maps, never none
            assert client.shared_memory in ("cuda", "system"), client.shared_memory_reason
        assert client.shared_memory_reason == "the server maps a region registered from here"
        headers = admin_headers_for(client._client)  # the status is a restricted API
        status = (
            client._client.get_system_shared_memory_status(headers=headers)
            if client.shared_memory == "system"
            else client._client.get_cuda_shared_memory_status(headers=headers)
        )
        assert "bgblur_" not in str(status)  # the probe's region is unregistered
        got = client.blur(frames).blurred_nhwc_u8
        if not isinstance(got, np.ndarray):  # CUDA shared memory: a CuPy array
            got = got.get()
        np.testing.assert_array_equal(got, expected)
    mine = f"bgblur_{os.getpid()}_"  # the client library's regions of this process
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(mine)]
