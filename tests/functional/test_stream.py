"""``background_blur_stream``: the ensemble's interface plus Triton sequences, masks smoothed
over each stream's frames (``temporal_smoothing``), on the real server over gRPC and HTTP."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

STREAM = "background_blur_stream"
STATELESS = "background_blur"
PROTOCOLS = ["grpc", "http"]


@pytest.fixture(scope="module", params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def server(request, server_pool):
    """The shared server of each device (the GPU one: the state lives in GPU memory)."""
    return server_pool.get(request.param)


def _client(server, protocol: str):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url, network_timeout=120)


def _mask(server, protocol, frames, *, model=STREAM, parameters=None, **sequence):
    module, client = _client(server, protocol)
    try:
        tensor = module.InferInput("FRAMES", list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(frames))
        response = client.infer(
            model,
            [tensor],
            outputs=[module.InferRequestedOutput("MASK")],
            parameters=parameters,
            **sequence,
        )
        return response.as_numpy("MASK")
    finally:
        client.close()


@pytest.fixture(scope="module")
def two_frames(astronaut_frames):
    """Frame A, and B: A with its left third darkened (a change the smoothing must carry)."""
    a = astronaut_frames[:1].copy()
    b = a.copy()
    b[:, :, : a.shape[2] // 3] //= 2
    return a, b


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_first_frame_of_a_stream_equals_the_stateless_result(server, protocol, two_frames):
    a, _ = two_frames
    stream = _mask(server, protocol, a, sequence_id=101, sequence_start=True)
    np.testing.assert_array_equal(stream, _mask(server, protocol, a, model=STATELESS))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_later_frames_are_smoothed_with_the_stream_history(server, protocol, two_frames):
    a, b = two_frames
    seq = 200 + PROTOCOLS.index(protocol)
    _mask(server, protocol, a, sequence_id=seq, sequence_start=True)
    smoothed = _mask(server, protocol, b, sequence_id=seq, sequence_end=True)
    stateless = _mask(server, protocol, b, model=STATELESS)
    assert smoothed.shape == stateless.shape
    assert not np.array_equal(smoothed, stateless)
    # Off: the same frames in a sequence give the stateless masks.
    off = {"temporal_smoothing": 0}
    _mask(server, protocol, a, sequence_id=seq, sequence_start=True, parameters=off)
    unsmoothed = _mask(server, protocol, b, sequence_id=seq, sequence_end=True, parameters=off)
    np.testing.assert_array_equal(unsmoothed, stateless)


def test_a_request_carries_one_frame_of_its_stream(server, two_frames):
    """Triton's sequence batcher takes one frame per request (it batches the frames of many
    streams together); a request of several frames is refused, naming why."""
    a, b = two_frames
    with pytest.raises(InferenceServerException) as caught:
        _mask(
            server,
            "grpc",
            np.concatenate([a, b]),
            sequence_id=300,
            sequence_start=True,
            sequence_end=True,
        )
    assert "batch-size 1" in str(caught.value)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_streams_do_not_share_history(server, two_frames):
    a, b = two_frames
    _mask(server, "grpc", a, sequence_id=400, sequence_start=True)
    fresh_b = _mask(server, "grpc", b, sequence_id=401, sequence_start=True)
    _mask(server, "grpc", b, sequence_id=400, sequence_end=True)
    _mask(server, "grpc", b, sequence_id=401, sequence_end=True)
    np.testing.assert_array_equal(fresh_b, _mask(server, "grpc", b, model=STATELESS))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_request_without_a_sequence_is_refused(server, protocol, two_frames):
    a, _ = two_frames
    with pytest.raises(InferenceServerException) as caught:
        _mask(server, protocol, a)
    assert "correlation" in str(caught.value).lower() or "sequence" in str(caught.value).lower()


@pytest.mark.parametrize("value", [-0.1, 1.0, "strong", 1e999])
def test_bad_temporal_smoothing_is_invalid_arg(server, value, two_frames):
    a, _ = two_frames
    with pytest.raises(InferenceServerException) as caught:
        _mask(
            server,
            "grpc",
            a,
            sequence_id=500,
            sequence_start=True,
            sequence_end=True,
            parameters={"temporal_smoothing": value},
        )
    assert "temporal_smoothing" in str(caught.value)
    assert caught.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")


def test_the_stateless_ensemble_takes_no_temporal_smoothing(server, two_frames):
    a, _ = two_frames
    mask = _mask(server, "grpc", a, model=STATELESS, parameters={"temporal_smoothing": 0.5})
    np.testing.assert_array_equal(mask, _mask(server, "grpc", a, model=STATELESS))


def test_the_stream_smoothing_is_gated_by_the_frames(triton_server, astronaut_frames):
    """The ensemble hands temporal_smoothing the frame's network input: a still scene with sensor
    noise is smoothed by the motion-aware gate (as the in-process pipeline with a smoother fed
    the network input does), not by the probability gate alone."""
    from bgblur.device import Device
    from bgblur.models.registry import DEFAULT_MODEL
    from bgblur.parameters import DEFAULT_TEMPORAL_SMOOTHING, BlurParams
    from bgblur.pipeline import BackgroundBlurPipeline
    from bgblur.stages.temporal import TemporalSmoother

    rng = np.random.default_rng(3)
    scene = astronaut_frames[:1].astype(np.float32)
    stream = [
        np.clip(scene + rng.normal(0, 6, scene.shape), 0, 255).astype(np.uint8) for _ in range(4)
    ]
    served = [
        _mask(
            triton_server,
            "grpc",
            frame,
            sequence_id=600,
            sequence_start=i == 0,
            sequence_end=i == len(stream) - 1,
        )
        for i, frame in enumerate(stream)
    ]
    pipeline = BackgroundBlurPipeline(DEFAULT_MODEL, Device("cpu"))

    def in_process(with_frames: bool) -> list[np.ndarray]:
        spec = pipeline.spec
        smoother = TemporalSmoother(Device("cpu"), input_mean=spec.mean, input_std=spec.std)
        masks = []
        for i, frame in enumerate(stream):

            def smooth(probability, network_input, i=i):
                return smoother(
                    "s",
                    probability,
                    start=i == 0,
                    end=False,
                    strength=DEFAULT_TEMPORAL_SMOOTHING,
                    network_input_n3hw=network_input if with_frames else None,
                    out_dtype=np.float16,
                )

            masks.append(pipeline(frame, BlurParams(), smooth_probability=smooth)[1])
        return masks

    motion, alone = in_process(True), in_process(False)
    for s, m in zip(served, motion, strict=True):
        assert np.abs(s.astype(int) - m.astype(int)).max() <= 1
    last_alone = np.abs(served[-1].astype(int) - alone[-1].astype(int))
    assert last_alone.max() > 1  # the probability gate alone gives another mask
