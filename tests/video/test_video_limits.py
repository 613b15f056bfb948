"""The video model's bounds: batches and buffers sized in bytes, the per-session memory limit,
and chunked streams that must keep moving (total time, average rate), on the real server (CPU).
"""

from __future__ import annotations

import queue
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bgblur.parameters import MAX_REQUEST_BYTES
from bgblur.video.serving import VideoModelSettings
from bgblur.video.transcode import (
    QUEUED_FRAME_BYTES,
    VideoOptions,
    _prefetch,
    frames_per_batch,
    plan_frames,
)
from bgblur_client.decoders import DecodedBatch

CONFIG = Path(__file__).parents[2] / "model_repository" / "background_blur_video" / "config.pbtxt"


# ---- library: sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "requested", "expected"),
    [
        (7680, 4320, 4, 2),  # 8K UHD: 2 frames = MAX_REQUEST_BYTES exactly
        (4320, 7680, 8, 2),  # portrait 8K
        (7680, 4320, 1, 1),
        (3840, 2160, 8, 8),  # 4K UHD: 8 frames = MAX_REQUEST_BYTES exactly
        (4096, 2160, 8, 7),  # DCI 4K: one frame fewer
        (1920, 1080, 8, 8),  # 1080p: the request's batch, well within the limit
        (1920, 1080, 4, 4),
    ],
)
def test_frames_per_batch_keeps_every_batch_within_the_request_limit(
    width: int, height: int, requested: int, expected: int
) -> None:
    frames = frames_per_batch(width, height, requested)

    assert frames == expected
    assert frames * width * height * 3 <= MAX_REQUEST_BYTES


def test_the_frame_plan_bounds_every_buffer_by_bytes() -> None:
    small, full_hd = plan_frames(192, 144, 4), plan_frames(1920, 1080, 4)
    uhd_8k = plan_frames(7680, 4320, 4)

    assert full_hd.batch_frames == 4 and full_hd.queued_bytes == 2 * full_hd.batch_bytes
    assert uhd_8k.batch_frames == 2 and uhd_8k.queued_bytes == uhd_8k.batch_bytes
    assert uhd_8k.queued_bytes <= QUEUED_FRAME_BYTES
    # libx264 at 8K: no lookahead, one reference frame, no B-frames, one thread
    assert uhd_8k.x264_options == {"threads": "1", "rc-lookahead": "0", "refs": "1", "bf": "0"}
    assert "rc-lookahead" not in full_hd.x264_options  # medium's 40 frames fit at 1080p
    assert small.frame_bytes < full_hd.frame_bytes < uhd_8k.frame_bytes
    # the default session limit holds an 8K session with room for its input
    assert uhd_8k.frame_bytes + (256 << 20) < VideoModelSettings().max_session_bytes
    # a fast preset's own smaller buffers are kept
    assert "rc-lookahead" not in plan_frames(3840, 2160, 4, "ultrafast").x264_options


def test_the_decoder_thread_queues_at_most_its_byte_budget() -> None:
    """A slow consumer: the producer stays at most one batch queued plus the one it holds."""
    batch = np.zeros((2, 100, 100, 3), np.uint8)
    produced: list[int] = []

    def batches():
        for index in range(8):
            produced.append(index)
            yield DecodedBatch(batch.copy(), [index, index])

    ahead = []
    for item in _prefetch(batches(), batch.nbytes, threading.Event()):
        time.sleep(0.05)
        ahead.append(len(produced) - (item.pts[0] + 1))

    assert max(ahead) <= 2
    assert len(ahead) == 8


# ---- library: settings ---------------------------------------------------------------------


def test_the_config_parameters_are_the_settings_defaults() -> None:
    pairs = re.findall(r'key: "(\w+)", value: \{ string_value: "([^"]*)" \}', CONFIG.read_text())
    parameters = dict(pairs)

    assert {"max_session_bytes", "max_streams", "max_stream_seconds"} <= set(parameters)
    assert VideoModelSettings.from_parameters(parameters) == VideoModelSettings()


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"max_session_bytes": "2 GiB"}, "'max_session_bytes' must be int, got '2 GiB'"),
        ({"max_session_bytes": "0"}, "'max_session_bytes' must be >= 1"),
        ({"max_streams": "5"}, "'max_streams' must be in [0, max_sessions = 4]"),
        ({"max_stream_seconds": "nan"}, "'max_stream_seconds' must be > 0"),
        ({"min_stream_bytes_per_s": "-1"}, "'min_stream_bytes_per_s' must be >= 0"),
        ({"chunk_timeout_s": "0"}, "'chunk_timeout_s' must be > 0"),
        ({"decoder": "gpu"}, "'decoder' must be one of"),
    ],
)
def test_bad_settings_fail_the_load_naming_the_parameter(
    parameters: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        VideoModelSettings.from_parameters(parameters)


# ---- served: 8K at the default settings ----------------------------------------------------


@pytest.fixture(scope="module")
def uhd_8k_clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """3 frames of 7680x4320 H.264 (a gradient, brighter each frame), no audio."""
    import av

    width, height = 7680, 4320
    path = tmp_path_factory.mktemp("8k") / "8k.mp4"
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(3):
            rgb = np.stack(
                [
                    (x * 255 // width).astype(np.uint8),
                    (y * 255 // height).astype(np.uint8),
                    np.full((height, width), 60 + 60 * index, np.uint8),
                ],
                axis=-1,
            )
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path.read_bytes()


def test_an_8k_video_is_transcoded_at_the_default_settings(triton_server, uhd_8k_clip, video):
    """The default batch (4) is cut to 2 frames at 8K: uncut, the clip's 3 frames would go in one
    298 MB batch, over the ensemble's request limit. Every frame comes back, at full size."""
    out, done, error = video.stream_video(triton_server.grpc_url, uhd_8k_clip)

    assert error is None, error.message()
    assert done[-1] == 3
    assert video.decode_rgb(out)[1]["frames"] == 3
    assert video.decode_rgb(out)[1]["size"] == (7680, 4320)


# ---- served: a server with tight limits ----------------------------------------------------

LIMIT_PADDING = 120_000
"""Input bytes a 192x144 session may hold under the limits server's ``max_session_bytes``: the
24-frame ramp (~23 KB) and the short stream (~50 KB) fit, the 96-frame stream (~190 KB) does not."""
GRACE_S, MIN_RATE, MAX_STREAM_S, CHUNK_TIMEOUT_S = 6.0, 4000, 8.0, 2.0
WATCH_S = 0.5  # the model checks its open streams this often
SLACK_S = 3.0  # scheduling delays on a loaded CI box, beyond the model's own bound
TOKEN = {"stream_token": "the-limits-test-stream-token"}


@pytest.fixture(scope="module")
def tiny_clip_bytes(tmp_path_factory: pytest.TempPathFactory, video) -> bytes:
    """4 frames of 64x48, no audio: a whole file served in well under a second."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.mp4"
    return video.write_clip(path, video.ramp_frames_nhwc_u8(64, 48, 4), audio=False).read_bytes()


@pytest.fixture(scope="module")
def limits_server(tiny_clip_bytes, video):
    """A CPU server whose video model has 2 sessions, 1 of them for streams, a memory limit
    just above a 192x144 session's frame buffers, and short stream budgets (warmed up)."""
    from bgblur.server.launcher import TritonServer

    frame_bytes = plan_frames(192, 144, VideoOptions().batch_size).frame_bytes
    parameters = {
        "max_sessions": "2",
        "max_streams": "1",
        "max_session_bytes": str(frame_bytes + LIMIT_PADDING),
        "chunk_timeout_s": str(CHUNK_TIMEOUT_S),
        "max_stream_seconds": str(MAX_STREAM_S),
        "min_stream_bytes_per_s": str(MIN_RATE),
        "stream_rate_grace_s": str(GRACE_S),
    }
    server = TritonServer(
        device="cpu", segmentation_model="fixed_ellipse", model_parameters=parameters
    ).start()
    try:
        _, _, error = video.stream_video(server.grpc_url, tiny_clip_bytes)
        assert error is None, error.message()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def short_stream_bytes(tmp_path_factory: pytest.TempPathFactory, video) -> bytes:
    """The 24-frame ramp as a fragmented MP4 (a fragment every 4 frames), with audio."""
    path = tmp_path_factory.mktemp("short") / "short.mp4"
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    frames = video.ramp_frames_nhwc_u8()
    return video.write_clip(path, frames, options=options, codec_options={"g": "4"}).read_bytes()


class StreamClient:
    """One gRPC stream to the video model; its answers (result, error) queued with their time."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.answers: queue.Queue = queue.Queue()
        self.client.start_stream(
            callback=lambda result, error: self.answers.put((time.monotonic(), result, error))
        )

    def errors(self, wait_s: float, *, first: bool = False) -> list[tuple[float, str]]:
        """The errors answered within ``wait_s`` (and the time of each); with ``first``, as
        soon as there is one."""
        found, deadline = [], time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                at, _, error = self.answers.get(timeout=left)
            except queue.Empty:
                break
            if error is not None:
                found.append((at, error.message()))
                if first:
                    break
        return found

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def send_paced(
    video, client: StreamClient, sequence_id: int, pieces: list[bytes], every_s: float
) -> tuple[float, list[tuple[float, str]]]:
    """Send ``pieces`` as one stream (START on the first, no END), one every ``every_s``, until
    an error comes (then what else comes within 1 s), or ``CHUNK_TIMEOUT_S`` after the last.
    Returns (the START's time, the errors with their times)."""
    started = time.monotonic()
    for index, piece in enumerate(pieces):
        video.send_video_chunk(
            client.client, piece, sequence_id, start=index == 0, parameters=TOKEN
        )
        errors = client.errors(every_s)
        if errors:
            return started, errors + client.errors(1.0)
    return started, client.errors(CHUNK_TIMEOUT_S + 2 * WATCH_S)


def test_a_slow_drip_stream_is_stopped_while_whole_files_are_served(
    limits_server, streamable_clip_bytes, tiny_clip_bytes, video
) -> None:
    """2 KB, then 64 bytes every 0.25 s (~600 bytes/s, under 4000): every chunk comes well within
    ``chunk_timeout_s``, yet the stream is stopped once ``stream_rate_grace_s`` is over. While
    it holds the one stream session, another stream is refused (``max_streams``) and a whole
    file is served in the other session."""
    pieces = [streamable_clip_bytes[:2048]] + [
        streamable_clip_bytes[2048 + 64 * i : 2048 + 64 * (i + 1)] for i in range(100)
    ]
    dripping, other = StreamClient(limits_server.grpc_url), StreamClient(limits_server.grpc_url)
    outcome: dict[str, object] = {}
    drip = threading.Thread(
        target=lambda: outcome.update(result=send_paced(video, dripping, 801, pieces, every_s=0.25))
    )
    try:
        drip.start()
        time.sleep(0.5)
        video.send_video_chunk(other.client, pieces[0], 802, start=True, parameters=TOKEN)
        refused = other.errors(30, first=True)
        _, done, error = video.stream_video(limits_server.grpc_url, tiny_clip_bytes)
        file_served = time.monotonic()
        drip.join(timeout=GRACE_S + 20)
    finally:
        dripping.close()
        other.close()

    assert refused and "chunked-stream sessions of this server are in use" in refused[0][1]
    assert "max_streams" in refused[0][1]
    assert error is None and done[-1] == 4
    started, errors = outcome["result"]
    assert errors, "the dripping stream was not stopped"
    stopped = errors[0][0]
    assert any("under min_stream_bytes_per_s = 4,000" in m for _, m in errors), errors
    assert GRACE_S <= stopped - started <= GRACE_S + WATCH_S + SLACK_S
    assert file_served < stopped  # served while the stream still held its session


def test_a_stream_open_too_long_is_stopped_however_fast_it_sends(
    limits_server, streamable_clip_bytes, video
) -> None:
    """4 KB every 0.4 s (10 KB/s, over the minimum rate), never an END: stopped after
    ``max_stream_seconds``."""
    pieces = video.chunks_of(streamable_clip_bytes[: 4096 * 25], 4096)
    client = StreamClient(limits_server.grpc_url)
    try:
        started, errors = send_paced(video, client, 803, pieces, every_s=0.4)
    finally:
        client.close()

    assert errors, "the stream was not stopped"
    assert any("(max_stream_seconds = 8)" in message for _, message in errors), errors
    assert MAX_STREAM_S <= errors[0][0] - started <= MAX_STREAM_S + WATCH_S + SLACK_S


def test_an_abandoned_stream_is_stopped_and_forgotten(
    limits_server, short_stream_bytes, video
) -> None:
    """START and one chunk, then nothing: after ``chunk_timeout_s`` the START request gets the
    error, and the same sequence ID opens a new stream afterwards (nothing left behind)."""
    chunks = video.chunks_of(short_stream_bytes, 8192)
    started = time.monotonic()
    _, _, acks, errors = video.stream_video_chunks(
        limits_server.grpc_url, chunks[:2], sequence_id=404, end=False, timeout_s=60
    )
    waited = time.monotonic() - started

    assert acks == 1
    assert len(errors) == 1 and "no chunk for" in errors[0], errors
    assert "chunk_timeout_s = 2" in errors[0]
    assert CHUNK_TIMEOUT_S <= waited < 30
    out, _, acks, errors = video.stream_video_chunks(
        limits_server.grpc_url, chunks, sequence_id=404
    )
    assert errors == [] and video.decode_rgb(out)[1]["frames"] == 24


def test_sessions_over_the_memory_limit_are_refused_and_the_server_serves_on(
    limits_server, streamable_clip_bytes, ramp_clip_bytes, tmp_path: Path, video
) -> None:
    """``max_session_bytes`` = a 192x144 session's frame buffers + 120 KB: a 1280x720 file (its
    frames need far more), an input over the limit itself, and a 192x144 stream past 120 KB
    are each refused naming the limit; the next request after each is served."""
    limit = plan_frames(192, 144, VideoOptions().batch_size).frame_bytes + LIMIT_PADDING
    hd = video.write_clip(
        tmp_path / "hd.mp4", video.ramp_frames_nhwc_u8(1280, 720, 4), audio=False
    ).read_bytes()
    messages = []
    for data in (hd, bytes(limit + 1)):
        out, _, error = video.stream_video(limits_server.grpc_url, data)
        messages.append(error.message() if error is not None else None)
        assert out == b""
        _, done, error = video.stream_video(limits_server.grpc_url, ramp_clip_bytes)
        assert error is None and done[-1] == 24
    _, _, _, errors = video.stream_video_chunks(
        limits_server.grpc_url, video.chunks_of(streamable_clip_bytes, 8192), sequence_id=805
    )
    _, done, error = video.stream_video(limits_server.grpc_url, ramp_clip_bytes)

    assert messages[0] is not None and "VIDEO needs about" in messages[0]
    assert "1280x720 frames" in messages[0]
    assert f"over the session limit max_session_bytes = {limit:,}" in messages[0]
    assert messages[1] is not None
    assert f"over the session limit max_session_bytes = {limit:,}" in messages[1]
    assert errors and any(f"(max_session_bytes = {limit:,} less" in m for m in errors), errors
    assert error is None and done[-1] == 24
