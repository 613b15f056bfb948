"""A stream that arrives in chunks (bgblur.video.growing) and transcoding it as it arrives."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bgblur.errors import InvalidInputError
from bgblur.video.growing import GrowingBytes

av = pytest.importorskip("av")


def test_a_reader_waits_for_the_next_chunk_and_sees_the_end_once_finished() -> None:
    stream = GrowingBytes(max_bytes=100)
    stream.append(b"abc")
    reader = stream.reader()
    assert reader.read(2) == b"ab" and reader.read(10) == b"c"
    got: list[bytes] = []
    waiting = threading.Thread(target=lambda: got.append(reader.read(10)))
    waiting.start()
    time.sleep(0.2)
    assert waiting.is_alive() and got == []  # nothing yet: the read waits, no end of file
    stream.append(b"de")
    waiting.join(timeout=5)
    assert got == [b"de"]
    stream.finish()
    assert reader.read(10) == b""
    assert stream.reader().read() == b"abcde"  # every reader starts at the first byte
    assert not reader.seekable()


def test_abort_wakes_a_waiting_reader_with_the_reason() -> None:
    stream = GrowingBytes(max_bytes=100)
    reader = stream.reader()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            reader.read(4)
        except InvalidInputError as exc:
            errors.append(exc)

    waiting = threading.Thread(target=read)
    waiting.start()
    time.sleep(0.1)
    stream.abort("no chunk for 60 s")
    waiting.join(timeout=5)
    assert not waiting.is_alive()
    assert [str(e) for e in errors] == ["the video stream was stopped: no chunk for 60 s"]
    with pytest.raises(InvalidInputError, match="stopped"):
        stream.append(b"x")


def test_a_stream_past_its_limit_is_refused_and_stopped() -> None:
    stream = GrowingBytes(max_bytes=4)
    stream.append(b"abc")
    with pytest.raises(InvalidInputError, match="exceeds 4 bytes"):
        stream.append(b"de")
    assert stream.abort_reason == "the stream exceeds 4 bytes (max_input_bytes)"
    with pytest.raises(InvalidInputError):
        stream.reader().read(1)


def test_a_lowered_limit_holds_the_next_chunks_and_names_its_setting() -> None:
    stream = GrowingBytes(max_bytes=100)
    stream.append(b"abcdef")
    stream.set_limit(8, "max_session_bytes = 8")
    stream.append(b"gh")
    with pytest.raises(InvalidInputError, match=r"exceeds 8 bytes \(max_session_bytes = 8\)"):
        stream.append(b"i")
    assert stream.abort_reason == "the stream exceeds 8 bytes (max_session_bytes = 8)"


def test_a_limit_below_what_the_stream_holds_stops_it() -> None:
    stream = GrowingBytes(max_bytes=100)
    stream.append(b"abcdef")
    with pytest.raises(InvalidInputError, match="exceeds 4 bytes"):
        stream.set_limit(4, "max_session_bytes")
    with pytest.raises(InvalidInputError, match="stopped"):
        stream.append(b"x")


def test_no_chunk_after_the_end() -> None:
    stream = GrowingBytes(max_bytes=10)
    stream.finish()
    with pytest.raises(InvalidInputError, match="already ended"):
        stream.append(b"a")


def feed(stream: GrowingBytes, chunks: list[bytes], hold_before: int, go: threading.Event):
    """Append ``chunks`` on a thread; before chunk ``hold_before`` wait for ``go`` (10 s)."""

    def run() -> None:
        for index, chunk in enumerate(chunks):
            if index == hold_before:
                go.wait(timeout=10)
            stream.append(chunk)
        stream.finish()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("container", ["fragmented-mp4", "mpegts"])
def test_transcode_starts_blurring_before_the_stream_ends(request, container, video) -> None:
    """A fragmented MP4 or an MPEG-TS stream (its ADTS audio re-encoded: the fragmented MP4's
    header cannot hold it as it is) fed in 4 KiB chunks: the first batch is blurred while the
    last chunks are still held back, and the output has every frame, in order, and audio."""
    from bgblur.video.transcode import VideoOptions, transcode

    fixture = "streamable_clip_bytes" if container == "fragmented-mp4" else "mpegts_clip_bytes"
    streamable_clip_bytes = request.getfixturevalue(fixture)
    chunks = video.chunks_of(streamable_clip_bytes, 4096)
    assert len(chunks) >= 6
    stream = GrowingBytes(max_bytes=1 << 30)
    first_batch = threading.Event()
    held = len(chunks) - 2
    feeder = feed(stream, chunks, hold_before=held, go=first_batch)
    sent_when_blurred: list[int] = []

    def blur(frames: np.ndarray) -> np.ndarray:
        if not first_batch.is_set():
            sent_when_blurred.append(len(stream))
            first_batch.set()
        return frames

    out = b"".join(
        chunk.data for chunk in transcode(stream, blur, options=VideoOptions(batch_size=4))
    )
    feeder.join(timeout=10)

    assert sent_when_blurred and sent_when_blurred[0] < len(streamable_clip_bytes)
    video.assert_same_video_in_order(out, streamable_clip_bytes)


def test_transcode_of_a_stopped_stream_ends_with_the_reason(streamable_clip_bytes, video) -> None:
    from bgblur.video.transcode import VideoOptions, transcode

    chunks = video.chunks_of(streamable_clip_bytes, 4096)
    stream = GrowingBytes(max_bytes=1 << 30)
    for chunk in chunks[: len(chunks) // 2]:
        stream.append(chunk)
    threading.Timer(0.5, stream.abort, args=("no chunk for 60 s",)).start()

    with pytest.raises(
        InvalidInputError, match=r"^the video stream was stopped: no chunk for 60 s$"
    ):
        for _ in transcode(stream, lambda f: f, options=VideoOptions(batch_size=4)):
            pass


def test_a_plain_mp4_in_chunks_is_refused_with_what_to_do(tmp_path, video) -> None:
    """The index of a plain MP4 sits at its end: not readable front to back once the media
    before it is larger than FFmpeg's read buffer (a small file would fit in it)."""
    from bgblur.video.transcode import transcode

    frames = video.ramp_frames_nhwc_u8(count=48)
    plain = video.write_clip(tmp_path / "plain.mp4", frames, codec_options={"qp": "0"})
    data = plain.read_bytes()
    assert len(data) > 1 << 18  # ~300 KB before the index; FFmpeg buffers 32 KB
    stream = GrowingBytes(max_bytes=1 << 30)
    for chunk in video.chunks_of(data, 1 << 16):
        stream.append(chunk)
    stream.finish()

    with pytest.raises(InvalidInputError, match="send a plain MP4 whole"):
        next(iter(transcode(stream, lambda f: f)))
