"""The decoder interface (``bgblur_client.decoders``): its one table of choices, and the PyAV
decoder that the client and the server-side video model both use, on real files (CPU).

The GPU decoders' own tests are in tests/video/test_gpu_decoders.py (``gpu`` marker).
"""

from __future__ import annotations

import io
import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from bgblur_client.decoders import (
    AUTO_ORDER,
    DECODER_CHOICES,
    DECODERS,
    DecodedBatch,
    DecodeSettings,
    VideoDecodeError,
    audio_packets,
    decode_pyav,
    decode_video,
    decoder_names,
    display_timestamps,
    resolve_decoder,
)
from bgblur_client.errors import ClientError, UsageError

CLIP = Path(__file__).resolve().parents[1] / "data" / "video_h264_320x240.mp4"  # 24 frames
CLIP_FRAMES = 24
NO_GPU_DECODER = not any(DECODERS[name].available() for name in ("nvdec", "dali"))


def reference_frames(path: Path | bytes) -> tuple[np.ndarray, list[int | None]]:
    """Every frame ``[N, H, W, 3]`` uint8 and its pts, decoded one by one with PyAV with the
    decoder's swscale flags (the accurate path)."""
    from av.video.reformatter import Interpolation

    flags = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    with av.open(source) as container:
        frames = list(container.decode(video=0))
    rgb = np.stack([f.to_ndarray(format="rgb24", interpolation=flags) for f in frames])
    return rgb, [f.pts for f in frames]


def batches_of(items) -> list[DecodedBatch]:
    return [item for item in items if isinstance(item, DecodedBatch)]


def write_clip(
    path: Path,
    sizes: list[tuple[int, int]],
    *,
    audio: bool = False,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """An H.264 clip of one frame per entry of ``sizes`` ((width, height)), 24 frames/s, with a
    mono AAC track when ``audio``."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=container_format, options=options or {}) as container:
        video = container.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        video.width, video.height = sizes[0]
        video.pix_fmt = "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=48_000)
            sound.layout = "mono"
        for index, (width, height) in enumerate(sizes):
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 255, (height, width, 3), dtype=np.uint8), format="rgb24"
            )
            frame.pts, frame.time_base = index, Fraction(1, 24)
            container.mux(video.encode(frame))
            if sound is not None:
                tone = av.AudioFrame.from_ndarray(
                    np.zeros((1, 2000), np.float32), format="fltp", layout="mono"
                )
                tone.sample_rate, tone.pts = 48_000, index * 2000
                container.mux(sound.encode(tone))
        container.mux(video.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))
    return path


# ---- the table ------------------------------------------------------------------------------


def test_one_table_names_every_choice_and_where_it_may_run() -> None:
    assert DECODER_CHOICES == ("auto", "pyav", "nvdec", "dali")
    assert set(AUTO_ORDER) == set(DECODERS)
    assert decoder_names("client") == ("pyav", "nvdec", "dali")
    assert decoder_names("server") == ("pyav", "nvdec")  # DALI reads files: client only
    assert [name for name, spec in DECODERS.items() if spec.on_gpu] == ["nvdec", "dali"]
    assert all(spec.name == name for name, spec in DECODERS.items())
    assert DECODERS["pyav"].interleaves_audio and not DECODERS["nvdec"].interleaves_audio


def test_every_factory_names_a_decoder_callable() -> None:
    """The ``module:callable`` paths resolve (the GPU decoders' modules import without a GPU;
    their packages are imported only when they run)."""
    assert DECODERS["pyav"].load() is decode_pyav
    for name in ("nvdec", "dali"):
        decoder = DECODERS[name].load()
        assert callable(decoder) and decoder.__name__ == f"decode_{name}"


def test_the_cpu_decoder_is_always_available() -> None:
    assert DECODERS["pyav"].available()
    assert resolve_decoder("pyav") == "pyav"


@pytest.mark.skipif(not NO_GPU_DECODER, reason="a GPU decoder runs here")
def test_auto_takes_pyav_where_no_gpu_decoder_runs() -> None:
    assert resolve_decoder("auto") == "pyav"
    assert resolve_decoder("auto", side="server") == "pyav"


@pytest.mark.skipif(not NO_GPU_DECODER, reason="a GPU decoder runs here")
@pytest.mark.parametrize(
    ("name", "needs"),
    [("nvdec", "PyNvVideoCodec, the bgblur server library"), ("dali", "nvidia-dali")],
)
def test_an_unavailable_gpu_decoder_is_a_usage_error_naming_what_it_needs(
    name: str, needs: str
) -> None:
    with pytest.raises(UsageError, match=f"--decoder {name} needs {needs}.*NVIDIA GPU"):
        resolve_decoder(name)


@pytest.mark.parametrize(
    ("choice", "side", "allowed"),
    [("vaapi", "client", "auto, pyav, nvdec, dali"), ("dali", "server", "auto, pyav, nvdec")],
)
def test_an_unknown_choice_names_the_choices(choice: str, side, allowed: str) -> None:
    with pytest.raises(UsageError, match=f"must be one of {allowed}, got '{choice}'"):
        resolve_decoder(choice, side=side)


def test_the_batch_and_settings_types_check_what_they_hold() -> None:
    batch = DecodedBatch(np.zeros((2, 4, 6, 3), np.uint8), [0, None])
    assert len(batch) == 2 and batch.nbytes == 144 and not batch.on_gpu
    with pytest.raises(ValueError, match="2 frames but 1 timestamps"):
        DecodedBatch(np.zeros((2, 4, 6, 3), np.uint8), [0])
    with pytest.raises(ValueError, match="batch_frames must be >= 1"):
        DecodeSettings(batch_frames=0)
    with pytest.raises(ValueError, match="on_size_change"):
        DecodeSettings(on_size_change="crop")  # type: ignore[arg-type]
    assert issubclass(VideoDecodeError, ClientError)  # the CLI prints it, exit status 1


# ---- the PyAV decoder -----------------------------------------------------------------------


@pytest.mark.parametrize("source_kind", ["path", "bytes", "reader"])
def test_pyav_batches_hold_every_frame_in_order_with_its_pts(source_kind: str) -> None:
    source = {
        "path": CLIP,
        "bytes": CLIP.read_bytes(),
        "reader": lambda: io.BytesIO(CLIP.read_bytes()),
    }[source_kind]
    expected, expected_pts = reference_frames(CLIP)

    batches = batches_of(decode_pyav(source, DecodeSettings(batch_frames=5)))

    assert [len(b) for b in batches] == [5, 5, 5, 5, 4]
    np.testing.assert_array_equal(np.concatenate([b.frames_nhwc_u8 for b in batches]), expected)
    assert [p for b in batches for p in b.pts] == expected_pts
    assert all(b.frames_nhwc_u8.flags.c_contiguous and not b.on_gpu for b in batches)
    # a new array per batch: a batch still in use is never overwritten by the next
    arrays = [b.frames_nhwc_u8 for b in batches]
    assert not any(np.shares_memory(a, b) for a, b in itertools.pairwise(arrays))
    assert display_timestamps(CLIP) == sorted(expected_pts)


def test_pyav_turns_frames_upright() -> None:
    expected, _ = reference_frames(CLIP)

    batches = batches_of(decode_pyav(CLIP, DecodeSettings(batch_frames=8, quarter_turns=1)))

    frames = np.concatenate([b.frames_nhwc_u8 for b in batches])
    assert frames.shape == (CLIP_FRAMES, 320, 240, 3)  # portrait: width and height swapped
    np.testing.assert_array_equal(frames, np.rot90(expected, 1, axes=(1, 2)))
    assert all(b.frames_nhwc_u8.flags.c_contiguous for b in batches)


def items_seen(items) -> list[tuple[str, int | None, int | None, int]]:
    """``(kind, pts, dts, size)`` of each item, read while the decoder's container is open (a
    packet's stream is gone once it closes): kind ``"batch"`` or the packet's stream type."""
    return [
        ("batch", None, None, len(item))
        if isinstance(item, DecodedBatch)
        else (item.stream.type, item.pts, item.dts, item.size)
        for item in items
    ]


def test_audio_packets_are_interleaved_only_when_asked_for(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "tone.mp4", [(64, 48)] * 12, audio=True)

    without = items_seen(decode_video("pyav", clip, DecodeSettings(batch_frames=4)))
    seen = items_seen(decode_video("pyav", clip, DecodeSettings(batch_frames=4, audio=True)))

    assert [kind for kind, *_ in without] == ["batch"] * 3
    kinds = [kind for kind, *_ in seen]
    assert set(kinds) == {"batch", "audio"} and kinds.count("batch") == 3
    assert kinds.index("audio") < len(kinds) - 1 - kinds[::-1].index("batch")  # among batches
    packets = [(pts, dts, size) for kind, pts, dts, size in seen if kind == "audio"]
    assert packets[-1][1] is None  # the end-of-stream packet that flushes an audio decoder
    assert all(dts is not None for _, dts, _ in packets[:-1])
    # the separate pass (for decoders that read only the video) yields the same packets
    separate = items_seen(audio_packets(clip, DecodeSettings()))
    assert [(pts, dts, size) for _, pts, dts, size in separate] == packets


def test_a_size_change_mid_stream_is_refused_or_scaled(tmp_path: Path) -> None:
    # raw H.264: two sequences of different sizes one after the other
    first = write_clip(tmp_path / "a.h264", [(64, 48)] * 3, container_format="h264")
    second = write_clip(tmp_path / "b.h264", [(96, 64)] * 3, container_format="h264")
    stream = first.read_bytes() + second.read_bytes()
    settings = DecodeSettings(batch_frames=2, label="video 'cut.h264'")

    with pytest.raises(VideoDecodeError) as refused:
        list(decode_pyav(stream, settings))
    scaled = batches_of(decode_pyav(stream, DecodeSettings(batch_frames=2, on_size_change="scale")))

    assert str(refused.value) == (
        "video 'cut.h264' changes size mid-stream (64x48 -> 96x64); not supported"
    )
    assert [b.frames_nhwc_u8.shape for b in scaled] == [(2, 48, 64, 3)] * 3


def test_a_truncated_file_is_an_error_when_its_header_declares_more(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "fast.mp4", [(64, 48)] * 24, options={"movflags": "faststart"})
    data = clip.read_bytes()
    cut = data[: int(len(data) * 0.7)]

    decoded = sum(len(b) for b in batches_of(decode_pyav(cut, DecodeSettings())))
    with pytest.raises(VideoDecodeError, match=r"^VIDEO is truncated: its header declares 24 fr"):
        list(decode_pyav(cut, DecodeSettings(declared_frames=24, label="VIDEO")))

    assert 0 < decoded < 24  # without the declared count, the frames there are


def test_an_unreadable_source_names_the_input() -> None:
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()

    with pytest.raises(VideoDecodeError, match=r"^video 'noise\.bin' is not readable: "):
        list(decode_pyav(noise, DecodeSettings(label="video 'noise.bin'")))


class _FailingReader(io.RawIOBase):
    """A file object whose reads fail after ``limit`` bytes (a stream stopped mid-way)."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data, self._position, self._limit = data, 0, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._position >= self._limit:
            raise _StreamStoppedError("the stream was stopped")
        size = min(len(buffer), self._limit - self._position, len(self._data) - self._position)
        buffer[:size] = self._data[self._position : self._position + size]
        self._position += size
        return size


class _StreamStoppedError(ValueError):
    pass


def test_the_sources_own_errors_pass_through_unchanged(tmp_path: Path) -> None:
    """The server's chunked streams stop their reader with their own error (naming the
    reason): the decoder re-raises it, not a decode error of its own."""
    clip = write_clip(tmp_path / "frag.mp4", [(64, 48)] * 24, options={"movflags": "faststart"})
    data = clip.read_bytes()

    with pytest.raises(_StreamStoppedError, match="the stream was stopped"):
        list(decode_pyav(lambda: _FailingReader(data, len(data) // 2), DecodeSettings()))
