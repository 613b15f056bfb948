"""The server-side video model's masks are smoothed over the video: its frames go through
``background_blur_stream`` under a sequence of the session's own (the real CPU server), and
``temporal_smoothing=0`` sends batches to the stateless ``background_blur``."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("av")
import tritonclient.grpc as grpcclient

from bgblur.video.serving import _SEQUENCE_END, _SEQUENCE_START, _StreamBls
from bgblur_client.stats import StatsSnapshot

FRAMES = 24  # the ramp clip's


def _requests_since(url: str, before: StatsSnapshot, expected: dict[str, int]) -> dict[str, int]:
    """Successful requests per model since ``before``, waiting (briefly) for ``expected``: the
    stream's END request follows the video's final response."""
    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + 10.0
    while True:
        split = StatsSnapshot.take(client).since(before)
        counts = {model: int(split.get(model, {}).get("requests", 0)) for model in expected}
        if counts == expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_the_video_goes_frame_by_frame_through_the_stream_ensemble(
    triton_server, ramp_clip_bytes, video
) -> None:
    before = StatsSnapshot.take(grpcclient.InferenceServerClient(triton_server.grpc_url))

    out, done, error = video.stream_video(
        triton_server.grpc_url, ramp_clip_bytes, {"batch_size": 8}
    )

    assert error is None and done[-1] == FRAMES
    video.assert_same_video_in_order(out, ramp_clip_bytes)
    # One request a frame, plus the last frame again, flagged END, which frees the state.
    expected = {"background_blur_stream": FRAMES + 1, "temporal_smoothing": FRAMES + 1}
    expected["background_blur"] = 0
    assert _requests_since(triton_server.grpc_url, before, expected) == expected


def test_smoothing_off_sends_batches_to_the_stateless_ensemble(
    triton_server, ramp_clip_bytes, video
) -> None:
    before = StatsSnapshot.take(grpcclient.InferenceServerClient(triton_server.grpc_url))

    _, done, error = video.stream_video(
        triton_server.grpc_url, ramp_clip_bytes, {"batch_size": 8, "temporal_smoothing": 0}
    )

    assert error is None and done[-1] == FRAMES
    expected = {"background_blur": FRAMES // 8, "background_blur_stream": 0}
    assert _requests_since(triton_server.grpc_url, before, expected) == expected


def test_smoothing_changes_the_output_of_a_changing_scene(
    triton_server, ramp_clip_bytes, video
) -> None:
    smoothed, _, error_on = video.stream_video(triton_server.grpc_url, ramp_clip_bytes, {})
    plain, _, error_off = video.stream_video(
        triton_server.grpc_url, ramp_clip_bytes, {"temporal_smoothing": 0}
    )

    assert error_on is None and error_off is None
    frames_on, _ = video.decode_rgb(smoothed)
    frames_off, _ = video.decode_rgb(plain)
    assert frames_on.shape == frames_off.shape
    # The first frame has no history, so it is the same; the brightening clip's later frames
    # carry some of their predecessors' masks.
    first = np.abs(frames_on[0].astype(int) - frames_off[0].astype(int)).mean()
    later = np.abs(frames_on[1:].astype(int) - frames_off[1:].astype(int)).mean()
    assert later > first


def test_a_bad_smoothing_value_is_refused_naming_it(triton_server, ramp_clip_bytes, video) -> None:
    _, _, error = video.stream_video(
        triton_server.grpc_url, ramp_clip_bytes, {"temporal_smoothing": 2}
    )

    assert error is not None and "temporal_smoothing" in str(error)


class _RecordingBls:
    """Stands in for the BLS call: records each request's frames and flags, returns the frames."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, str]] = []

    def __call__(self, frames, overrides, *, model, correlation_id, flags):
        self.calls.append((int(frames[0, 0, 0, 0]), flags, correlation_id, model))
        return frames.copy()


@pytest.mark.parametrize("batches", [[3, 2], [1]])
def test_the_session_sequence_starts_on_its_first_frame_and_ends_after_its_last(
    batches: list[int],
) -> None:
    bls = _RecordingBls()
    blur = _StreamBls(bls, {"blur_ksize": 31})
    frame_ids = iter(range(1, 100))
    for size in batches:
        frames = np.zeros((size, 4, 6, 3), np.uint8)
        for i in range(size):
            frames[i] = next(frame_ids)
        assert np.array_equal(blur(frames), frames)
    blur.end()
    blur.end()  # a second end sends nothing

    total = sum(batches)
    flags = [call[1] for call in bls.calls]
    assert [call[0] for call in bls.calls] == [*range(1, total + 1), total]
    assert flags == [_SEQUENCE_START, *[0] * (total - 1), _SEQUENCE_END]
    assert {call[2] for call in bls.calls} == {blur.sequence_id} and blur.sequence_id > 0
    assert {call[3] for call in bls.calls} == {"background_blur_stream"}


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_the_in_process_blur_smooths_as_the_served_stream_does(
    triton_server, server_pool, device: str
) -> None:
    """``blur="in_process"`` (the model's own pipeline and smoother, here on a worker thread as
    in a session) gives the frames that the served ``background_blur_stream`` gives for the
    same sequence of frames."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from bgblur.device import Device
    from bgblur.parameters import DEFAULT_TEMPORAL_SMOOTHING, BlurParams
    from bgblur.pipeline import BackgroundBlurPipeline
    from bgblur.stages.temporal import TemporalSmoother
    from bgblur.video.serving import _InProcessBlur, _Session
    from bgblur.video.transcode import VideoOptions

    from .conftest import ramp_frames_nhwc_u8

    frames = ramp_frames_nhwc_u8(count=6)
    session = _Session(
        np.zeros(0, np.uint8),
        VideoOptions(),
        BlurParams(),
        {},
        temporal_smoothing=DEFAULT_TEMPORAL_SMOOTHING,
    )
    server = triton_server if device == "cpu" else server_pool.get("gpu")
    on = Device() if device == "cpu" else Device(kind="gpu", index=0)
    smoother = TemporalSmoother(on)
    blur = _InProcessBlur(
        BackgroundBlurPipeline("selfie_general", on), smoother, threading.Lock(), session
    )

    def run_session() -> np.ndarray:
        batches = [blur(frames[:4]), blur(frames[4:])]
        return np.concatenate([b if isinstance(b, np.ndarray) else b.get() for b in batches])

    with ThreadPoolExecutor(1) as worker:
        in_process = worker.submit(run_session).result()
    assert smoother.live_streams == 1
    blur.end()
    assert smoother.live_streams == 0

    client = grpcclient.InferenceServerClient(server.grpc_url)
    served = []
    for i in range(len(frames)):
        tensor = grpcclient.InferInput("FRAMES", [1, *frames.shape[1:]], "UINT8")
        tensor.set_data_from_numpy(frames[i : i + 1])
        result = client.infer(
            "background_blur_stream",
            [tensor],
            outputs=[grpcclient.InferRequestedOutput("BLURRED")],
            sequence_id=7001,
            sequence_start=i == 0,
            sequence_end=i == len(frames) - 1,
        )
        served.append(result.as_numpy("BLURRED")[0])
    difference = np.abs(in_process.astype(int) - np.stack(served).astype(int))
    assert difference.max() <= 1
