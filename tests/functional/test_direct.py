"""``background_blur_direct``: the whole service in one Python model, served by the real Triton
server next to the ensemble. Same interface, same results (within 1 LSB), same validation."""

from __future__ import annotations

import concurrent.futures

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
from bgblur_client.transport import BlurClient

DIRECT = "background_blur_direct"
ENSEMBLE = "background_blur"
PROTOCOLS = ["grpc", "http"]


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def servers():
    """Servers with the direct model (opt-in: ``direct_model=True``), one per device, started
    on first use and stopped after this module."""
    started: dict[str, TritonServer] = {}

    def get(device: str) -> TritonServer:
        if device not in started:
            started[device] = TritonServer(device=device, direct_model=True).start()
        return started[device]

    yield get
    for server in started.values():
        server.stop()


def client(server, protocol: str, model: str) -> BlurClient:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return BlurClient(url, protocol=protocol, model=model, timeout_s=120)


def raw_infer(server, protocol: str, frames: np.ndarray, parameters: dict | None) -> None:
    """One request to the direct model with tritonclient itself (no client-side checks)."""
    if protocol == "grpc":
        module, raw = grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    else:
        module, raw = httpclient, httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = module.InferInput("FRAMES", list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(frames)
        raw.infer(DIRECT, [tensor], parameters=parameters)
    finally:
        raw.close()


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_direct_equals_the_ensemble_and_the_library(
    servers, device, protocol, astronaut_frames
) -> None:
    server = servers(device)
    parameters = {"blur_sigma": 4.0, "bilateral_diameter": 7}
    with client(server, protocol, DIRECT) as direct, client(server, protocol, ENSEMBLE) as ens:
        got = direct.blur(astronaut_frames, want_mask=True, parameters=parameters)
        want = ens.blur(astronaut_frames, want_mask=True, parameters=parameters)
    assert got.blurred_nhwc_u8.shape == astronaut_frames.shape
    assert got.mask_nhw_u8.shape == astronaut_frames.shape[:3]
    assert max_difference(got.blurred_nhwc_u8, want.blurred_nhwc_u8) <= 1
    assert max_difference(got.mask_nhw_u8, want.mask_nhw_u8) <= 1
    pipeline = BackgroundBlurPipeline(DEFAULT_MODEL, Device(device, 0))
    blurred, mask = pipeline(astronaut_frames, BlurParams().with_overrides(parameters))
    if device == "gpu":
        blurred, mask = blurred.get(), mask.get()
    assert max_difference(got.blurred_nhwc_u8, blurred) <= 1
    assert max_difference(got.mask_nhw_u8, mask) <= 1
    # and the parameters took effect: the default blur gives another image
    with client(server, protocol, DIRECT) as direct:
        default = direct.blur(astronaut_frames)
    assert max_difference(default.blurred_nhwc_u8, got.blurred_nhwc_u8) > 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("frames", "parameters", "fragment"),
    [
        (np.zeros((1, 16, 16, 3), np.uint8), {"blur_ksize": 4}, "blur_ksize"),
        (np.zeros((1, 16, 16, 3), np.uint8), {"blur_radius": 3}, "unknown parameter"),
        (np.zeros((1, 0, 16, 3), np.uint8), None, "FRAMES must not be empty"),
        (np.zeros((1, 1, 7681, 3), np.uint8), None, "exceeds the maximum 7680x4320"),
    ],
    ids=["even-ksize", "unknown-parameter", "empty", "too-wide"],
)
def test_bad_input_is_invalid_arg_and_the_model_keeps_serving(
    servers, protocol, frames, parameters, fragment
) -> None:
    server = servers("cpu")
    with pytest.raises(InferenceServerException) as info:
        raw_infer(server, protocol, frames, parameters)
    assert info.value.status() in ("StatusCode.INVALID_ARGUMENT", "400"), info.value.message()
    assert fragment in info.value.message()
    with client(server, protocol, DIRECT) as direct:
        good = np.full((1, 24, 32, 3), 200, np.uint8)
        assert direct.blur(good).blurred_nhwc_u8.shape == good.shape
    assert server.is_ready()


def test_frames_of_different_sizes_at_once(servers) -> None:
    server = servers("cpu")
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 256, (1 + i % 2, 40 + 8 * i, 64, 3), np.uint8) for i in range(6)]

    def run(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with client(server, "grpc", DIRECT) as direct, client(server, "grpc", ENSEMBLE) as ens:
            return direct.blur(frames).blurred_nhwc_u8, ens.blur(frames).blurred_nhwc_u8

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, batches))
    for frames, (got, want) in zip(batches, results, strict=True):
        assert got.shape == frames.shape
        assert max_difference(got, want) <= 1


def test_it_is_served_only_when_asked_for(server_pool) -> None:
    raw = grpcclient.InferenceServerClient(server_pool.get("cpu").grpc_url)
    try:
        assert raw.is_model_ready(ENSEMBLE)
        assert not raw.is_model_ready(DIRECT)
    finally:
        raw.close()
