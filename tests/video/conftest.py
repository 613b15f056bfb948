"""Clips for the video tests, generated with PyAV (small, so the CPU suite stays fast).

PyAV is imported only where used: the GPU machine has none, and its GPU tests still collect.

``ramp_clip``: frame i is the astronaut photo at brightness ``0.35 + 0.6 * i / (N - 1)``, so
the order of frames can be read back from their mean brightness even after the blur (which
keeps the mean). H.264 in MP4 with a stereo AAC tone, 24 frames at 24 frames/s.
"""

from __future__ import annotations

import contextlib
import queue
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

WIDTH, HEIGHT, FRAMES, FPS = 192, 144, 24, 24


def ramp_frames_nhwc_u8(
    width: int = WIDTH, height: int = HEIGHT, count: int = FRAMES
) -> np.ndarray:
    """``[count, height, width, 3]`` uint8: the photo, brighter frame after frame."""
    import skimage.data

    photo = cv2.resize(skimage.data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
    gains = 0.35 + 0.6 * np.arange(count) / max(count - 1, 1)
    return np.stack([np.clip(photo * g, 0, 255).astype(np.uint8) for g in gains])


def write_clip(
    path: Path,
    frames_nhwc_u8: np.ndarray,
    *,
    fps: int = FPS,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: bool = True,
    rotation: int = 0,
    options: dict[str, str] | None = None,
    codec_options: dict[str, str] | None = None,
) -> Path:
    """Encode ``frames_nhwc_u8`` (RGB) into ``path`` with PyAV, optionally with an AAC tone;
    ``options`` are the container's (e.g. ``movflags``), ``codec_options`` the encoder's."""
    import av

    with av.open(str(path), "w", options=options or {}) as container:
        video = container.add_stream(codec, rate=fps, options=codec_options or {})
        video.height, video.width = frames_nhwc_u8.shape[1:3]
        video.pix_fmt = pix_fmt
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=48_000)
            sound.layout = "stereo"
        for i, rgb in enumerate(frames_nhwc_u8):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            samples = int(48_000 * len(frames_nhwc_u8) / fps)
            t = np.arange(samples) / 48_000
            tone = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, samples, 1024):
                block = np.ascontiguousarray(np.stack([tone[start : start + 1024]] * 2))
                chunk = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
                chunk.sample_rate = 48_000
                chunk.pts = start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    return path


def decode_rgb(data_or_path: bytes | Path) -> tuple[np.ndarray, dict[str, object]]:
    """All frames ``[N, H, W, 3]`` uint8 of the first video stream, and its properties."""
    import io

    import av

    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(source) as container:
        video = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video)]
        props = {
            "frames": len(frames),
            "size": (video.width, video.height),
            "rate": video.average_rate,
            "audio": [s.codec_context.name for s in container.streams.audio],
        }
    return np.stack(frames), props


BRIGHTNESS_TOLERANCE = 2.0
"""Mean levels an output frame of the ramp clip may differ from its input frame. Measured on the
H200 (2026-12-02, selfie, blur_sigma 8, NVDEC and PyAV, BLS and in process): the blur and the
second H.264 encode lower the mean by 0.0-1.4 levels, most at the bright end, where the ramp
rises by 2.3 levels a frame; so "the nearest input frame" (the former check) picked frame 21
for output frame 22 without any frame out of place."""


def mean_brightness(frames_nhwc_u8: np.ndarray) -> np.ndarray:
    """``[N]`` float: each frame's mean over pixels and channels."""
    return frames_nhwc_u8.reshape(len(frames_nhwc_u8), -1).mean(axis=1)


def brightness_order_ok(out_nhwc_u8: np.ndarray, in_nhwc_u8: np.ndarray) -> bool:
    """The output frames are the ramp clip's input frames, all of them, in order: their mean
    brightness rises frame after frame as the input's does (a swapped, repeated or stale frame
    breaks the rise) and stays within :data:`BRIGHTNESS_TOLERANCE` of the input frame of the
    same index (a frame from elsewhere in the clip, e.g. a batch late, is far outside it)."""
    if len(out_nhwc_u8) != len(in_nhwc_u8):
        return False
    out_mean, in_mean = mean_brightness(out_nhwc_u8), mean_brightness(in_nhwc_u8)
    rising = bool((np.diff(out_mean) > 0).all())
    return rising and bool((np.abs(out_mean - in_mean) <= BRIGHTNESS_TOLERANCE).all())


def assert_same_video_in_order(out: bytes | Path, source: bytes | Path):
    """The output file has the source's properties (frames, size, rate, audio) and its frames,
    in order (:func:`brightness_order_ok`). Returns (frames out, frames in)."""
    frames_in, props_in = decode_rgb(source)
    frames_out, props_out = decode_rgb(out)
    assert props_out == props_in
    assert brightness_order_ok(frames_out, frames_in), brightness_report(frames_out, frames_in)
    return frames_out, frames_in


def brightness_report(out_nhwc_u8: np.ndarray, in_nhwc_u8: np.ndarray) -> str:
    """For a failure message: each output frame's mean brightness and its difference from the
    input frame of the same index."""
    out_mean, in_mean = mean_brightness(out_nhwc_u8), mean_brightness(in_nhwc_u8)
    count = min(len(out_mean), len(in_mean))
    return (
        f"{len(out_mean)} frames out, {len(in_mean)} in; mean out "
        f"{out_mean.round(1).tolist()}; out - in {(out_mean[:count] - in_mean[:count]).round(1)}"
    )


def send_video_chunk(
    client: Any,
    chunk: bytes,
    sequence_id: int | str,
    *,
    start: bool = False,
    end: bool = False,
    parameters: dict[str, Any] | None = None,
    request_id: str = "",
) -> None:
    """One request to ``background_blur_video`` on a started gRPC stream: a chunk of the
    stream ``sequence_id``, or a whole file when it is 0."""
    import tritonclient.grpc as grpcclient

    video_input = grpcclient.InferInput("VIDEO", [len(chunk)], "UINT8")
    video_input.set_data_from_numpy(np.frombuffer(chunk, np.uint8))
    client.async_stream_infer(
        "background_blur_video",
        [video_input],
        request_id=request_id,
        sequence_id=sequence_id,
        sequence_start=start,
        sequence_end=end,
        parameters=parameters,
        enable_empty_final_response=True,
    )


def stream_video_chunks(
    url: str,
    chunks: list[bytes],
    parameters: dict[str, Any] | None = None,
    *,
    sequence_id: int = 4242,
    end: bool = True,
    timeout_s: float = 120.0,
    token: str = "the-stream-token-of-this-test",
):
    """Send ``chunks`` to ``background_blur_video`` as one chunked stream (a sequence ID, START
    on the first, END on the last unless ``end`` is False) over a gRPC stream.

    Returns (output bytes, FRAMES_DONE of each response, acknowledgements of the chunks after
    the first, the errors).
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for index, chunk in enumerate(chunks):
            send_video_chunk(
                client,
                chunk,
                sequence_id,
                start=index == 0,
                end=end and index == len(chunks) - 1,
                parameters={**(parameters or {}), "stream_token": token}
                if index == 0
                else {"stream_token": token},
                request_id=str(index),
            )
        out, done, acks, errors = bytearray(), [], 0, []
        while True:
            result, error = answers.get(timeout=timeout_s)
            if error is not None:  # a stream's error names no request: the first ends it
                errors.append(error.message())
                with contextlib.suppress(queue.Empty):
                    while True:  # what else arrives at once
                        result, error = answers.get(timeout=1.0)
                        if error is not None:
                            errors.append(error.message())
                        elif result.get_response().id != "0":
                            acks += 1
                break
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            if response.id != "0":
                acks += final
                continue
            chunk = result.as_numpy("VIDEO_CHUNK")
            if chunk is not None:
                out += chunk.tobytes()
                done.append(int(result.as_numpy("FRAMES_DONE")[0]))
            if final:
                break
        return bytes(out), done, acks, errors
    except queue.Empty:
        return b"", [], 0, ["no answer"]
    finally:
        client.stop_stream()
        client.close()


def stream_video(url: str, data: bytes, parameters: dict[str, Any] | None = None):
    """Send one file to ``background_blur_video`` over a gRPC stream.

    Returns (output bytes, FRAMES_DONE of each response, the error or None).
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        send_video_chunk(client, data, 0, parameters=parameters)  # sequence 0: a whole file
        out, done = bytearray(), []
        while True:
            result, error = answers.get(timeout=120)
            if error is not None:
                return bytes(out), done, error
            chunk = result.as_numpy("VIDEO_CHUNK")
            if chunk is not None:
                out += chunk.tobytes()
                done.append(int(result.as_numpy("FRAMES_DONE")[0]))
            if result.get_response().parameters["triton_final_response"].bool_param:
                return bytes(out), done, None
    finally:
        client.stop_stream()
        client.close()


@pytest.fixture(scope="session")
def ramp_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("video") / "ramp.mp4", ramp_frames_nhwc_u8())


@pytest.fixture(scope="session")
def ramp_clip_bytes(ramp_clip: Path) -> bytes:
    return ramp_clip.read_bytes()


FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


@pytest.fixture(scope="session")
def streamable_clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 4 s ramp (96 frames) as a fragmented MP4 with a keyframe every 4 frames (a fragment
    each), with audio: a stream that can be decoded as it arrives."""
    path = tmp_path_factory.mktemp("video") / "ramp-fragmented.mp4"
    frames = ramp_frames_nhwc_u8(count=96)
    return write_clip(path, frames, options=FRAGMENTED_MP4, codec_options={"g": "4"}).read_bytes()


@pytest.fixture(scope="session")
def mpegts_clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The same 4 s ramp as MPEG-TS (H.264 + ADTS AAC), a live stream's usual container."""
    path = tmp_path_factory.mktemp("video") / "ramp.ts"
    return write_clip(path, ramp_frames_nhwc_u8(count=96), codec_options={"g": "4"}).read_bytes()


def chunks_of(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into pieces of ``size`` bytes (the last shorter)."""
    return [data[start : start + size] for start in range(0, len(data), size)]


class VideoHelpers:
    """The helpers above, for tests (conftest modules are not importable by name here)."""

    ramp_frames_nhwc_u8 = staticmethod(ramp_frames_nhwc_u8)
    write_clip = staticmethod(write_clip)
    decode_rgb = staticmethod(decode_rgb)
    brightness_order_ok = staticmethod(brightness_order_ok)
    brightness_report = staticmethod(brightness_report)
    assert_same_video_in_order = staticmethod(assert_same_video_in_order)
    chunks_of = staticmethod(chunks_of)
    stream_video = staticmethod(stream_video)
    stream_video_chunks = staticmethod(stream_video_chunks)
    send_video_chunk = staticmethod(send_video_chunk)


@pytest.fixture(scope="session")
def video() -> type[VideoHelpers]:
    return VideoHelpers
