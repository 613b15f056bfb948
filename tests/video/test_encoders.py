"""H.264 encoder choice (NVENC or libx264) and muxing of pre-encoded H.264 (bgblur.video.encoders).

No machine we test on has NVENC (the H100/H200 have NVDEC only), so the NVENC writers are fed here
by a real libx264 encoder that gives Annex-B access units the way NVENC does (SPS/PPS up front,
no B-frames, output a few frames late): the muxing, timestamps, rotation, colour tags, audio and
the fragmented MP4 are all checked on real H.264 data.
"""

from __future__ import annotations

import importlib.util
import io
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")  # the GPU machine may have no PyAV

from bgblur.errors import InvalidInputError, ModelUnavailableError  # noqa: E402
from bgblur.video import encoders  # noqa: E402
from bgblur.video.encoders import (  # noqa: E402
    NVENC_COLOR_RANGE,
    NVENC_COLORSPACE,
    choose_encoder,
    is_idr,
    split_access_units,
)
from bgblur.video.transcode import VideoOptions, transcode  # noqa: E402

HAS_PYNVVIDEOCODEC = importlib.util.find_spec("PyNvVideoCodec") is not None


@pytest.fixture(autouse=True)
def fresh_probes():
    encoders._NVENC_PROBES.clear()
    yield
    encoders._NVENC_PROBES.clear()


class AnnexBX264:
    """A real libx264 encoder with NVENC's interface: RGB frames in, Annex-B access units out.

    SPS/PPS come up front (``sequence_params``, global header) and not in-band, there are no
    B-frames, and the lookahead delays the output by several frames, as NVENC's queue does.
    ``units`` keeps every access unit handed out, for decoding them directly.
    """

    def __init__(self, width: int, height: int, rate: Fraction, gop: int = 12) -> None:
        self._context = av.CodecContext.create("libx264", "w")
        self._context.width, self._context.height = width, height
        self._context.pix_fmt = "yuv420p"
        self._context.time_base = 1 / rate
        self._context.framerate = rate
        self._context.flags |= av.codec.context.Flags.global_header
        self._context.options = {
            "crf": "18",  # as the x264 path
            "x264-params": f"annexb=1:bframes=0:keyint={gop}:rc-lookahead=5",
        }
        self._context.open()
        self.sequence_params = bytes(self._context.extradata)
        self._index = 0
        self.units: list[bytes] = []
        self.closed = False

    def encode(self, frame_hwc_u8: np.ndarray) -> list[bytes]:
        rgb = frame_hwc_u8 if frame_hwc_u8.ndim == 3 else np.repeat(frame_hwc_u8[..., None], 3, 2)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self._index
        self._index += 1
        return self._keep(self._context.encode(frame))

    def flush(self) -> list[bytes]:
        return self._keep(self._context.encode(None))

    def close(self) -> None:
        self.closed = True

    def _keep(self, packets: list) -> list[bytes]:
        units = [bytes(packet) for packet in packets]
        self.units += units
        return units


def decode_units(units: list[bytes], sequence_params: bytes = b"") -> np.ndarray:
    """RGB frames decoded straight from Annex-B access units (the reference)."""
    decoder = av.CodecContext.create("h264", "r")
    frames = []
    for unit in [sequence_params + units[0], *units[1:], None]:
        for frame in decoder.decode(None if unit is None else av.Packet(unit)):
            frames.append(frame.to_ndarray(format="rgb24"))
    return np.stack(frames)


def decoded(data: bytes | Path) -> tuple[np.ndarray, list[float], dict[str, object]]:
    """Frames, their times in seconds and the stream's properties of a written file."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(source) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        props = {
            "frames": len(frames),
            "size": (stream.width, stream.height),
            "rate": stream.average_rate,
            "rotation": frames[0].rotation,
            "colorspace": int(frames[0].colorspace),
            "color_range": int(frames[0].color_range),
            "audio": [s.codec_context.name for s in container.streams.audio],
        }
        times = [float(f.pts * stream.time_base) for f in frames]
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), times, props


def source_frames(path: Path) -> list[tuple[np.ndarray, int]]:
    """(stored-orientation RGB, pts) of each frame of ``path``."""
    with av.open(str(path)) as container:
        return [(f.to_ndarray(format="rgb24"), f.pts) for f in container.decode(video=0)]


# ---- choice ---------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_PYNVVIDEOCODEC, reason="PyNvVideoCodec is installed here")
class TestChoiceWithoutPyNvVideoCodec:
    def test_auto_falls_back_to_x264_and_says_why(self) -> None:
        kind, reason = choose_encoder("auto", width=640, height=360, rate=Fraction(30))
        assert (kind, reason) == ("x264", "PyNvVideoCodec not installed")
        assert encoders._NVENC_PROBES == {0: "PyNvVideoCodec not installed"}  # cached per GPU

    def test_nvenc_requested_is_an_error_naming_the_reason(self) -> None:
        with pytest.raises(RuntimeError, match="unavailable: PyNvVideoCodec not installed"):
            choose_encoder("nvenc", width=640, height=360, rate=30)

    def test_the_server_answers_unavailable_for_nvenc(self, ramp_clip_bytes) -> None:
        with pytest.raises(ModelUnavailableError, match="PyNvVideoCodec not installed"):
            list(transcode(ramp_clip_bytes, lambda f: f, options=VideoOptions(encoder="nvenc")))

    def test_auto_on_the_server_encodes_with_x264(self, ramp_clip_bytes, video) -> None:
        chunks = transcode(ramp_clip_bytes, lambda f: f, options=VideoOptions(encoder="auto"))
        out = b"".join(bytes(c.data) for c in chunks)
        assert video.decode_rgb(out)[1]["frames"] == 24


def test_every_x264_preset_has_an_nvenc_preset() -> None:
    """NVENC takes the P1..P7 preset matching the request's libx264 preset: every preset the
    client offers (and the video model accepts) has one, faster presets no slower ones."""
    from bgblur_client.encoding import X264_PRESETS

    assert list(encoders.NVENC_PRESETS) == list(X264_PRESETS)
    levels = [int(encoders.NVENC_PRESETS[p].removeprefix("P")) for p in X264_PRESETS]
    assert levels == sorted(levels) and set(levels) <= set(range(1, 8))


def test_x264_is_always_x264() -> None:
    assert choose_encoder("x264", width=64, height=48, rate=24) == ("x264", "requested")
    assert encoders._NVENC_PROBES == {}  # nothing probed


def test_a_bad_choice_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="encoder must be one of"):
        choose_encoder("h265", width=64, height=48, rate=24)


def test_a_cpu_instance_refuses_nvenc(ramp_clip_bytes) -> None:
    with pytest.raises(ModelUnavailableError, match="needs a GPU instance"):
        list(
            transcode(
                ramp_clip_bytes,
                lambda f: f,
                options=VideoOptions(encoder="nvenc"),
                nvenc_allowed=False,
            )
        )


@pytest.mark.parametrize("value", ["h265", "", 3, True])
def test_the_encoder_parameter_is_validated(value) -> None:
    with pytest.raises(InvalidInputError, match="parameter 'encoder' must be one of"):
        VideoOptions.split_parameters({"encoder": value})


def test_the_encoder_parameter_is_not_a_blur_parameter() -> None:
    options, rest = VideoOptions.split_parameters({"encoder": "x264", "blur_sigma": 3.0})
    assert options.encoder == "x264" and rest == {"blur_sigma": 3.0}


# ---- Annex-B ------------------------------------------------------------------------------


def test_access_units_split_back_into_the_encoders_packets(video) -> None:
    frames = video.ramp_frames_nhwc_u8(64, 48, 20)
    encoder = AnnexBX264(64, 48, Fraction(24), gop=8)
    for frame in frames:
        encoder.encode(frame)
    encoder.flush()

    assert len(encoder.units) == 20
    assert split_access_units(b"".join(encoder.units)) == encoder.units
    assert [is_idr(u) for u in encoder.units] == [i % 8 == 0 for i in range(20)]
    # with SPS/PPS in front, as NVENC's repeatspspps gives them, they stay with their frame
    units = [encoder.sequence_params + u if is_idr(u) else u for u in encoder.units]
    assert split_access_units(b"".join(units)) == units


# ---- the client's writer ----------------------------------------------------------------------


def write_with_client_writer(clip: Path, out: Path, encoder: str, video_encoder=None) -> None:
    from bgblur_client.video import _H264Writer, _probe

    fmt = _probe(clip)
    with av.open(str(clip)) as source:
        audio = source.streams.audio[0] if source.streams.audio else None
        writer = _H264Writer(
            out, fmt, audio_source=audio, encoder=encoder, video_encoder=video_encoder
        )
        streams = [source.streams.video[0]] + ([audio] if audio else [])
        for packet in source.demux(streams):
            if packet.stream is audio:
                writer.write_audio(packet)
                continue
            for frame in packet.decode():
                writer.write_frame(frame.to_ndarray(format="rgb24"), frame.pts)
        writer.finish()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_client_writer_muxes_annexb_units_like_the_x264_path(
    tmp_path: Path, video, suffix: str
) -> None:
    frames = video.ramp_frames_nhwc_u8(96, 64, 24)
    clip = video.write_clip(tmp_path / "rot.mp4", frames, rotation=90, audio=True)
    from bgblur_client.video import _probe

    fmt = _probe(clip)
    encoder = AnnexBX264(96, 64, fmt.rate)
    pre_encoded, reference = tmp_path / f"nvenc{suffix}", tmp_path / f"x264{suffix}"

    write_with_client_writer(clip, pre_encoded, "nvenc", encoder)
    write_with_client_writer(clip, reference, "x264")

    got, got_times, props = decoded(pre_encoded)
    _, x264_times, x264_props = decoded(reference)
    assert encoder.closed
    np.testing.assert_array_equal(
        got, decode_units(encoder.units, encoder.sequence_params)
    )  # the very same frames
    assert got_times == x264_times  # the source's timestamps, as the x264 path keeps them
    assert props == x264_props | {
        "colorspace": NVENC_COLORSPACE,  # BT.601 limited range: what NVENC makes of RGB
        "color_range": NVENC_COLOR_RANGE,
    }
    assert props["frames"] == 24 and props["size"] == (96, 64) and props["rotation"] == 90
    assert props["rate"] == 24 and props["audio"] == ["aac"]
    stored = np.stack([rgb for rgb, _ in source_frames(clip)])
    assert np.abs(got.astype(int) - stored).mean() < 3.0  # codec noise only


def test_client_mask_video_takes_gray_frames(tmp_path: Path, video) -> None:
    from bgblur_client.video import _H264Writer, _probe

    clip = video.write_clip(tmp_path / "c.mp4", video.ramp_frames_nhwc_u8(64, 48, 6), audio=False)
    fmt = _probe(clip)
    encoder = AnnexBX264(64, 48, fmt.rate)
    writer = _H264Writer(
        tmp_path / "mask.mp4", fmt, audio_source=None, encoder="nvenc", video_encoder=encoder
    )
    for i in range(6):
        writer.write_frame(np.full((48, 64), 40 * i, np.uint8), i)
    writer.finish()

    got, _, props = decoded(tmp_path / "mask.mp4")
    assert props["frames"] == 6
    assert np.abs(got[..., 0].mean(axis=(1, 2)) - 40 * np.arange(6)).max() < 3


def test_client_writer_abort_releases_the_encoder_and_deletes_the_file(
    tmp_path: Path, video
) -> None:
    from bgblur_client.video import _H264Writer, _probe

    clip = video.write_clip(tmp_path / "c.mp4", video.ramp_frames_nhwc_u8(64, 48, 4), audio=False)
    encoder = AnnexBX264(64, 48, Fraction(24))
    out = tmp_path / "partial.mp4"
    writer = _H264Writer(
        out, _probe(clip), audio_source=None, encoder="nvenc", video_encoder=encoder
    )
    writer.write_frame(np.zeros((48, 64, 3), np.uint8), 0)
    writer.abort()
    assert encoder.closed and not out.exists()


# ---- the server's fragmented MP4 --------------------------------------------------------------


def top_level_boxes(data: bytes) -> list[str]:
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        boxes.append(kind.decode())
        if size < 8:
            break
        offset += size
    return boxes


@pytest.mark.parametrize("audio_first", [False, True], ids=["interleaved", "audio-first"])
def test_fragmented_mp4_of_annexb_units_streams_and_plays(
    tmp_path: Path, video, audio_first: bool
) -> None:
    from bgblur.video.transcode import _first_frame, _FragmentedMp4Writer, _SourceFormat

    frames = video.ramp_frames_nhwc_u8(96, 64, 24)
    clip = video.write_clip(tmp_path / "rot.mp4", frames, rotation=90, audio=True)
    options = VideoOptions(gop_seconds=0.25)
    with av.open(str(clip)) as source:
        stream = source.streams.video[0]
        fmt = _SourceFormat.of(stream, _first_frame(av, source, stream))
    encoder = AnnexBX264(96, 64, fmt.rate, gop=6)
    chunks = []
    with av.open(str(clip)) as source:
        stream, audio = source.streams.video[0], source.streams.audio[0]
        writer = _FragmentedMp4Writer(
            av, fmt, options, audio, encoder="nvenc", video_encoder=encoder
        )
        # audio-first is what the NVDEC path does: the header must not wait for the video

        def packets():
            if audio_first:
                yield from source.demux(audio)
                source.seek(0)
                yield from source.demux(stream)
            else:
                yield from source.demux([stream, audio])

        for packet in packets():
            if packet.stream is audio:
                if packet.dts is not None:
                    writer.write_audio(packet)
                continue
            for frame in packet.decode():
                rgb = frame.to_ndarray(format="rgb24")
                writer.write_frame(np.rot90(rgb, fmt.quarter_turns), frame.pts)  # upright
                if writer.frames_done == 18:
                    chunks.append(writer.sink.take())
        writer.finish()
        chunks.append(writer.sink.take())
    out = b"".join(bytes(c) for c in chunks)

    assert top_level_boxes(out)[:4] == ["ftyp", "moov", "moof", "mdat"]
    got, got_times, props = decoded(out)
    np.testing.assert_array_equal(got, decode_units(encoder.units, encoder.sequence_params))
    assert props | {"rate": None} == {
        "frames": 24,
        "size": (96, 64),
        "rate": None,
        "rotation": 90,
        "colorspace": NVENC_COLORSPACE,
        "color_range": NVENC_COLOR_RANGE,
        "audio": ["aac"],
    }
    # Frames keep their spacing. The absolute start differs from the source in fragmented MP4
    # whatever the encoder: FFmpeg's muxer moves libx264's stream by its B-frame delay, and a
    # stream without B-frames (NVENC's) stays at 0 while the rest shifts by the audio priming,
    # so the first frame lasts longer.
    assert np.allclose(np.diff(got_times[1:]), 1 / 24)
    assert got_times[0] == 0.0
    if not audio_first:
        # the first chunk alone (18 frames encoded, a few still in the encoder) already plays
        prefix_frames, _, _ = decoded(bytes(chunks[0]))
        assert 0 < len(prefix_frames) < 24


# ---- GPU (gpu marker): the H100/H200 have no NVENC --------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_PYNVVIDEOCODEC, reason="needs PyNvVideoCodec")
def test_gpu_auto_falls_back_to_x264_where_nvenc_does_not_open(cupy) -> None:
    kind, reason = choose_encoder("auto", width=320, height=240, rate=Fraction(30), gpu=0)
    if kind == "nvenc":
        pytest.skip(f"this GPU has NVENC ({reason}): covered by the NVENC test below")
    assert reason.startswith("NVENC unavailable on GPU 0: "), reason
    with pytest.raises(RuntimeError, match="NVENC encoder requested but unavailable"):
        choose_encoder("nvenc", width=320, height=240, rate=30)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_PYNVVIDEOCODEC, reason="needs PyNvVideoCodec")
def test_gpu_cli_video_with_encoder_auto_writes_a_playable_file(
    cupy, server_pool, tmp_path: Path, capsys: pytest.CaptureFixture, video
) -> None:
    from bgblur_client.cli import main

    clip = video.write_clip(tmp_path / "in.mp4", video.ramp_frames_nhwc_u8(320, 240, 24))
    out = tmp_path / "out.mp4"
    url = server_pool.get("gpu").grpc_url

    code = main(["video", str(clip), str(out), "--url", url, "--encoder", "auto"])

    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    kind, reason = choose_encoder("auto", width=320, height=240, rate=30)
    assert f"encoder {kind}: {reason}" in printed
    _, props = video.decode_rgb(out)
    assert props == {"frames": 24, "size": (320, 240), "rate": Fraction(24), "audio": ["aac"]}


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_PYNVVIDEOCODEC, reason="needs PyNvVideoCodec")
@pytest.mark.parametrize("device_input", [False, True])
def test_gpu_nvenc_encodes_where_the_gpu_has_it(cupy, tmp_path: Path, video, device_input) -> None:
    kind, reason = choose_encoder("auto", width=192, height=144, rate=Fraction(24))
    if kind != "nvenc":
        pytest.skip(f"no NVENC here: {reason}")
    from bgblur.video.encoders import NvencH264Encoder

    frames = video.ramp_frames_nhwc_u8(192, 144, 24)
    clip = video.write_clip(tmp_path / "in.mp4", frames, audio=False)
    encoder = NvencH264Encoder(192, 144, rate=24, gop=12, device_input=device_input)
    units: list[bytes] = []
    real_encode, real_flush = encoder.encode, encoder.flush

    def keep(units_out: list[bytes]) -> list[bytes]:
        units.extend(units_out)
        return units_out

    encoder.encode = lambda f: keep(real_encode(cupy.asarray(f) if device_input else f))
    encoder.flush = lambda: keep(real_flush())
    write_with_client_writer(clip, tmp_path / "out.mp4", "nvenc", encoder)

    got, _, props = decoded(tmp_path / "out.mp4")
    assert props["frames"] == 24 and len(units) == 24
    np.testing.assert_array_equal(got, decode_units(units))
    assert np.abs(got.astype(int) - frames).mean() < 4.0  # BT.601 limited, tagged as such


# ---- the command line (CPU server) ------------------------------------------------------------


@pytest.mark.skipif(HAS_PYNVVIDEOCODEC, reason="PyNvVideoCodec is installed here")
def test_cli_encoder_choice(triton_server, ramp_clip: Path, tmp_path: Path, capsys, video) -> None:
    from bgblur_client.cli import main

    out = tmp_path / "out.mp4"
    url = triton_server.grpc_url

    assert main(["video", str(ramp_clip), str(out), "--url", url, "--encoder", "nvenc"]) == 2
    assert capsys.readouterr().err == (
        "bgblur: error: NVENC encoder requested but unavailable: PyNvVideoCodec not installed\n"
    )
    assert not out.exists()

    assert main(["video", str(ramp_clip), str(out), "--url", url, "--no-progress"]) == 0
    assert "(audio copied, encoder x264: PyNvVideoCodec not installed)" in capsys.readouterr().out
    assert video.decode_rgb(out)[1]["frames"] == 24

    with pytest.raises(SystemExit):
        main(["video", str(ramp_clip), str(out), "--encoder", "h265"])
