"""Background effects on the real Triton server, over gRPC and HTTP, through the ensemble and the
one-hop model: the halo-free blur by default and the whole-frame blur with ``halo_free=false``
(each equal to the library in this process), ``background=color`` and ``background=image`` with
the optional BACKGROUND input, every bad-input class answered INVALID_ARG naming what was wrong,
and the FOREGROUND_SHARE output."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import pytest
import skimage.data
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bgblur.device import Device
from bgblur.models.registry import DEFAULT_MODEL
from bgblur.parameters import BlurParams
from bgblur.pipeline import BackgroundBlurPipeline
from bgblur.server.launcher import TritonServer
from bgblur_client.cli import EXIT_OK, EXIT_USAGE, main
from bgblur_client.image import read_image_rgb, write_image
from bgblur_client.transport import BlurClient

PROTOCOLS = ["grpc", "http"]
MODELS = ["background_blur", "background_blur_direct"]


@pytest.fixture(scope="module")
def server():
    """One CPU server serving the ensemble and the direct model."""
    started = TritonServer(device="cpu", direct_model=True, supervision={"probe_interval_s": 0})
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def pipeline() -> BackgroundBlurPipeline:
    return BackgroundBlurPipeline(DEFAULT_MODEL, Device("cpu"))


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def raw(server, protocol):
    client: Any
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc_url)
    else:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    yield client
    client.close()


def infer(
    client: Any,
    model: str,
    frames: np.ndarray,
    *,
    background: np.ndarray | None = None,
    parameters: dict[str, Any] | None = None,
    outputs: tuple[str, ...] = ("BLURRED", "MASK", "FOREGROUND_SHARE"),
    background_datatype: str = "UINT8",
) -> dict[str, np.ndarray]:
    """One request with tritonclient itself (no client-side checks)."""
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    tensors = [module.InferInput("FRAMES", list(frames.shape), "UINT8")]
    tensors[0].set_data_from_numpy(frames)
    if background is not None:
        tensor = module.InferInput("BACKGROUND", list(background.shape), background_datatype)
        tensor.set_data_from_numpy(background)
        tensors.append(tensor)
    result = client.infer(
        model,
        tensors,
        outputs=[module.InferRequestedOutput(name) for name in outputs],
        parameters=parameters,
    )
    return {name: result.as_numpy(name) for name in outputs}


def assert_invalid_arg(error: InferenceServerException, protocol: str, *fragments: str) -> None:
    expected_status = "StatusCode.INVALID_ARGUMENT" if protocol == "grpc" else "400"
    assert error.status() == expected_status, (error.status(), error.message())
    for fragment in fragments:
        assert fragment in error.message(), (fragment, error.message())


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_default_is_halo_free_and_halo_free_false_is_the_whole_frame_blur(
    raw, model, pipeline, astronaut_frames
) -> None:
    default = infer(raw, model, astronaut_frames)
    whole = infer(raw, model, astronaut_frames, parameters={"halo_free": False})
    want_default, want_mask = pipeline(astronaut_frames, BlurParams())
    want_whole, _ = pipeline(astronaut_frames, BlurParams(halo_free=False))
    assert max_difference(default["BLURRED"], want_default) <= 1
    assert max_difference(whole["BLURRED"], want_whole) <= 1
    assert max_difference(default["MASK"], want_mask) <= 1
    np.testing.assert_array_equal(default["MASK"], whole["MASK"])
    background = default["MASK"] == 0
    assert (
        np.abs(default["BLURRED"][background].astype(int) - whole["BLURRED"][background]).max(
            initial=0
        )
        > 10
    )  # the halo next to the person differs


def test_color_background_is_the_colour_where_the_mask_is_0(raw, model, astronaut_frames) -> None:
    got = infer(
        raw,
        model,
        astronaut_frames,
        parameters={"background": "color", "background_color": "0,177,64"},
    )
    background = got["MASK"] == 0
    assert background.mean() > 0.2
    assert (got["BLURRED"][background] == (0, 177, 64)).all()
    person = got["MASK"] == 255
    np.testing.assert_array_equal(got["BLURRED"][person], astronaut_frames[person])


def test_image_background_one_per_frame_and_broadcast(
    raw, model, pipeline, astronaut_frames
) -> None:
    images = np.stack([skimage.data.chelsea(), skimage.data.coffee()[:300, :451]])  # 451x300
    params = {"background": "image"}
    each = infer(raw, model, astronaut_frames, background=images, parameters=params)
    want, _ = pipeline(astronaut_frames, BlurParams(background="image"), images)
    assert max_difference(each["BLURRED"], want) <= 1
    # One frame with one image (batch 1): the library broadcasts the same image to a batch.
    one = infer(raw, model, astronaut_frames[:1], background=images[:1], parameters=params)
    want_broadcast, _ = pipeline(astronaut_frames, BlurParams(background="image"), images[:1])
    assert max_difference(one["BLURRED"][0], want_broadcast[0]) <= 1
    background = each["MASK"][1] == 0
    assert (each["BLURRED"][1][background] != want_broadcast[1][background]).any()


def test_client_sends_a_colour_or_one_image_for_the_whole_batch(
    server, protocol, pipeline, astronaut_frames
) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    image = skimage.data.chelsea()
    with BlurClient(url, protocol=protocol, timeout_s=120) as client:
        replaced = client.blur(
            astronaut_frames, background=image, want_mask=True, want_foreground_share=True
        )
        colour = client.blur(astronaut_frames[0], background=(10, 20, 30), want_mask=True)
    want, _ = pipeline(astronaut_frames, BlurParams(background="image"), image[None])
    assert max_difference(replaced.blurred_nhwc_u8, want) <= 1
    assert replaced.foreground_share.shape == (2,)
    assert (replaced.foreground_share > 0.1).all()
    assert (colour.blurred_nhwc_u8[colour.mask_nhw_u8 == 0] == (10, 20, 30)).all()
    assert colour.foreground_share is None


@pytest.mark.parametrize(
    ("parameters", "background", "fragments"),
    [
        ({"background": "image"}, None, ("background=image needs the BACKGROUND",)),
        ({}, "image", ("BACKGROUND was sent but parameter 'background' is 'blur'",)),
        ({"background": "color"}, "image", ("parameter 'background' is 'color'",)),
        ({"background": "image"}, "batch3", ("batch size does not match",)),
        ({"background": "image"}, "float32", ("BACKGROUND",)),
        ({"background": "image"}, "4channels", ("BACKGROUND",)),
        ({"background": "image"}, "too-large", ("BACKGROUND frame of 7681x10 exceeds",)),
        ({"background": "sky"}, None, ("parameter 'background' must be one of blur, color",)),
        ({"background_color": "300,0,0"}, None, ("'background_color' must be R,G,B",)),
        ({"background_color": "green"}, None, ("'background_color' must be R,G,B",)),
        ({"halo_free": "sometimes"}, None, ("'halo_free' must be of type bool",)),
    ],
    ids=[
        "image-without-tensor",
        "tensor-without-image",
        "tensor-with-color",
        "batch",
        "dtype",
        "channels",
        "too-large",
        "background-value",
        "color-range",
        "color-form",
        "halo-free-value",
    ],
)
def test_bad_background_inputs_are_invalid_arg_naming_them(
    raw, protocol, model, astronaut_frames, parameters, background, fragments
) -> None:
    frames = astronaut_frames[:2]
    images = {
        None: None,
        "image": np.zeros((2, 8, 8, 3), np.uint8),
        "batch3": np.zeros((3, 8, 8, 3), np.uint8),
        "float32": np.zeros((2, 8, 8, 3), np.float32),
        "4channels": np.zeros((2, 8, 8, 4), np.uint8),
        "too-large": np.zeros((2, 10, 7681, 3), np.uint8),
    }[background]
    datatype = "FP32" if background == "float32" else "UINT8"
    with pytest.raises(InferenceServerException) as info:
        infer(
            raw,
            model,
            frames,
            background=images,
            parameters=parameters,
            background_datatype=datatype,
        )
    assert_invalid_arg(info.value, protocol, *fragments)
    # The server keeps serving.
    assert infer(raw, model, frames[:1], outputs=("BLURRED",))["BLURRED"].shape[0] == 1


def test_foreground_share_tells_a_frame_without_a_person(raw, model, astronaut_frames) -> None:
    flat = np.full((1, 512, 512, 3), (90, 140, 200), np.uint8)
    frames = np.concatenate([astronaut_frames[:1], flat])
    share = infer(raw, model, frames)["FOREGROUND_SHARE"]
    assert share.dtype == np.float32 and share.shape == (2, 1)
    assert share[0, 0] > 0.1
    assert share[1, 0] < 0.01
    mask = infer(raw, model, frames)["MASK"]
    np.testing.assert_allclose(share[:, 0], mask.mean(axis=(1, 2)) / 255, rtol=1e-6)


def test_mixed_concurrent_requests_are_each_answered_right(raw, server, model) -> None:
    """Requests with and without BACKGROUND, of different image sizes and effects, in flight
    at once (the dynamic batcher may put them in one execute): each gets its own answer."""
    frames = np.ascontiguousarray(skimage.data.astronaut()[None])
    small_image = np.full((1, 40, 60, 3), 7, np.uint8)
    large_image = np.full((1, 300, 200, 3), 250, np.uint8)
    cases = [
        ({}, None, None),
        ({"background": "image"}, small_image, 7),
        ({"background": "color", "background_color": "1,2,3"}, None, 1),
        ({"background": "image"}, large_image, 250),
        ({"halo_free": False}, None, None),
    ] * 3

    def run(case: tuple) -> tuple:
        parameters, image, value = case
        if isinstance(raw, grpcclient.InferenceServerClient):
            client = grpcclient.InferenceServerClient(server.grpc_url)
        else:
            client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        try:
            out = infer(client, model, frames, background=image, parameters=parameters)
        finally:
            client.close()
        return out, value

    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(run, cases))
    for out, value in results:
        background = out["MASK"][0] == 0
        if value is not None:
            assert (out["BLURRED"][0][background][:, 0] == value).all()
        else:
            assert len(np.unique(out["BLURRED"][0][background][:, 0])) > 10


def test_cli_image_takes_a_colour_or_an_image_file_as_background(server, tmp_path) -> None:
    photo, wall = tmp_path / "photo.png", tmp_path / "wall.png"
    write_image(photo, skimage.data.astronaut())
    write_image(wall, np.full((90, 160, 3), (200, 30, 30), np.uint8))
    common = ["--url", server.grpc_url, "--shared-memory", "none"]
    out, mask = tmp_path / "out.png", tmp_path / "mask.png"
    args = ["image", str(photo), str(out), "--mask", str(mask), "--background", "#00B140"]
    assert main([*args, *common]) == EXIT_OK
    blurred, mask_u8 = read_image_rgb(out), read_image_rgb(mask)[..., 0]
    assert (blurred[mask_u8 == 0] == (0, 177, 64)).all()
    assert main(["image", str(photo), str(out), "--background", str(wall), *common]) == EXIT_OK
    assert (read_image_rgb(out)[mask_u8 == 0] == (200, 30, 30)).all()
    assert main(["image", str(photo), str(out), "--no-halo-free", *common]) == EXIT_OK
    assert main(["image", str(photo), str(out), "--background", "#0B140", *common]) == EXIT_USAGE
