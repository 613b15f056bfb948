"""Outputs that appear whole, encoder settings and containers (library level), and the
served video model taking every encoder preset the client offers (the real server)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from bgblur_client.encoding import (
    H264_CONTAINERS,
    X264_PRESETS,
    EncoderSettings,
    check_settings_for,
    video_codec_for,
)
from bgblur_client.errors import ClientError, RequestRejectedError, UsageError
from bgblur_client.files import partial_path, write_bytes_whole
from bgblur_client.image import write_image
from bgblur_client.server_video import blur_video_server_side, remux
from bgblur_client.video import _H264Writer, _probe

DATA = Path(__file__).resolve().parents[1] / "data"
CLIP = DATA / "video_h264_320x240.mp4"


def test_partial_path_is_hidden_beside_the_output_with_its_extension(tmp_path: Path) -> None:
    out = tmp_path / "clip.final.mp4"

    first, second = partial_path(out), partial_path(out)

    assert first.parent == tmp_path and first.suffix == ".mp4"
    assert first.name.startswith(".clip.final.") and first.name.endswith(".partial.mp4")
    assert first != second


def test_write_bytes_whole_replaces_the_file(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")

    write_bytes_whole(out, b"new")

    assert out.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_write_image_into_a_missing_folder_fails_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        write_image(tmp_path / "missing" / "out.png", np.zeros((4, 4, 3), np.uint8))

    assert list(tmp_path.iterdir()) == []


def write_frames(writer: _H264Writer, count: int) -> None:
    with av.open(str(CLIP)) as source:
        for index, frame in enumerate(source.decode(video=0)):
            if index == count:
                break
            writer.write_frame(frame.to_ndarray(format="rgb24"), frame.pts)


def test_an_aborted_video_leaves_the_existing_output_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier result")
    writer = _H264Writer(out, _probe(CLIP), audio_source=None)
    write_frames(writer, 5)

    writer.abort()

    assert out.read_bytes() == b"an earlier result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_a_video_takes_its_name_only_when_finished(tmp_path: Path) -> None:
    out = tmp_path / "out.mkv"
    writer = _H264Writer(out, _probe(CLIP), audio_source=None)
    write_frames(writer, 5)

    assert not out.exists()  # the frames so far go to a partial file

    writer.finish()

    assert [p.name for p in tmp_path.iterdir()] == ["out.mkv"]
    with av.open(str(out)) as container:
        assert "matroska" in container.format.name.split(",")
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_crf_and_preset_set_the_libx264_stream(tmp_path: Path) -> None:
    sizes = {}
    for crf in (10, 45):
        out = tmp_path / f"crf{crf}.mp4"
        settings = EncoderSettings(crf=crf, preset="ultrafast")
        writer = _H264Writer(out, _probe(CLIP), audio_source=None, settings=settings)
        write_frames(writer, 10)
        writer.finish()
        sizes[crf] = out.stat().st_size
        with av.open(str(out)) as container:  # x264 writes its settings into the stream
            data = bytes(next(container.demux(video=0)))
        assert f"crf={crf}.0".encode() in data
        assert b"subme=0" in data  # what ultrafast sets (medium: subme=7)
    assert sizes[45] < sizes[10]


def test_vp9_writer_makes_webm(tmp_path: Path) -> None:
    out = tmp_path / "out.webm"
    settings = EncoderSettings(crf=40, preset="ultrafast")
    writer = _H264Writer(out, _probe(CLIP), audio_source=None, encoder="vp9", settings=settings)
    write_frames(writer, 6)
    writer.finish()

    with av.open(str(out)) as container:
        assert "webm" in container.format.name.split(",")
        stream = container.streams.video[0]
        assert stream.codec_context.name == "vp9"
        assert (stream.width, stream.height) == (320, 240)
        assert sum(1 for _ in container.decode(stream)) == 6


@pytest.mark.parametrize("suffix", H264_CONTAINERS)
def test_h264_containers(suffix: str) -> None:
    assert video_codec_for(f"out{suffix.upper()}") == "h264"
    assert video_codec_for(f"out{suffix}", server_side=True) == "h264"


def test_webm_is_vp9_here_and_refused_for_the_server() -> None:
    assert video_codec_for("out.webm") == "vp9"
    with pytest.raises(UsageError, match="WebM cannot hold"):
        video_codec_for("out.webm", server_side=True)


@pytest.mark.parametrize("name", ["out.avi", "out.gif", "out"])
def test_other_extensions_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="unsupported extension"):
        video_codec_for(name)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"crf": 64}, "crf must be in 0..63"),
        ({"crf": True}, "crf must be an integer"),
        ({"preset": "quick"}, "preset must be one of ultrafast"),
        ({"encoder": "h265"}, "encoder must be one of auto, nvenc, x264"),
    ],
)
def test_bad_settings_are_usage_errors(settings: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        EncoderSettings(**settings)


def test_crf_range_depends_on_the_codec() -> None:
    check_settings_for("vp9", EncoderSettings(crf=63))
    check_settings_for("h264", EncoderSettings(crf=51))
    with pytest.raises(UsageError, match=r"0\.\.51 for H\.264"):
        check_settings_for("h264", EncoderSettings(crf=52))


def test_server_parameters_name_the_video_models_options() -> None:
    assert EncoderSettings().server_parameters() == {"crf": 18, "preset": "medium"}
    assert EncoderSettings(crf=30, preset="fast", encoder="x264").server_parameters() == {
        "crf": 30,
        "preset": "fast",
        "encoder": "x264",
    }


@pytest.fixture(scope="module")
def two_frame_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden clip cut to its first 2 frames (H.264, 160x120): a video request in a blink."""
    path = tmp_path_factory.mktemp("presets") / "two-frames.mp4"
    with av.open(str(CLIP)) as source, av.open(str(path), "w") as target:
        stream = target.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for index, frame in enumerate(source.decode(video=0)):
            if index == 2:
                break
            small = frame.reformat(width=160, height=120, format="yuv420p")
            small.pts = index
            target.mux(stream.encode(small))
        target.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("preset", X264_PRESETS)
def test_the_video_model_encodes_with_every_client_preset(
    triton_server, two_frame_clip: Path, tmp_path: Path, preset: str
) -> None:
    """``--server-side --preset P`` for every P the client offers: the served
    ``background_blur_video`` model takes it and libx264 encodes with it."""
    out = tmp_path / "out.mp4"

    summary = blur_video_server_side(
        triton_server.grpc_url,
        two_frame_clip,
        out,
        progress=False,
        settings=EncoderSettings(preset=preset, encoder="x264"),
    )

    assert summary.frames == 2
    with av.open(str(out)) as result:
        assert result.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in result.decode(video=0)) == 2


def test_the_video_model_refuses_a_preset_the_client_does_not_offer(
    triton_server, two_frame_clip: Path, tmp_path: Path
) -> None:
    assert "quick" not in X264_PRESETS
    with pytest.raises(RequestRejectedError, match="parameter 'preset' must be one of ultrafast"):
        blur_video_server_side(
            triton_server.grpc_url,
            two_frame_clip,
            tmp_path / "out.mp4",
            progress=False,
            parameters={"preset": "quick"},
        )
    assert not (tmp_path / "out.mp4").exists()


def fragmented_mp4(path: Path, frames: int = 12) -> Path:
    """H.264 in fragmented MP4 (the server's output form), 1/15360 time base, AAC audio."""
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        video = container.add_stream("libx264", rate=24, options={"g": "6"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, 15360)
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "mono"
        rng = np.random.default_rng(0)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24"
            )
            frame.pts = index * 640
            container.mux(video.encode(frame))
            tone = av.AudioFrame.from_ndarray(
                np.zeros((1, 2000), np.float32), format="fltp", layout="mono"
            )
            tone.sample_rate, tone.pts = 48000, index * 2000
            container.mux(audio.encode(tone))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


@pytest.mark.parametrize(("suffix", "format_name"), [(".mkv", "matroska"), (".mov", "mov")])
def test_remux_copies_video_and_audio_into_the_named_container(
    tmp_path: Path, suffix: str, format_name: str
) -> None:
    source = fragmented_mp4(tmp_path / "in.mp4")
    target = tmp_path / f"out{suffix}"

    remux(source, target)

    with av.open(str(target)) as container:
        assert format_name in container.format.name.split(",")
        video = container.streams.video[0]
        assert video.average_rate == 24  # not the MP4 time base's 15360
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
        assert sum(1 for _ in container.decode(video)) == 12


def test_remux_of_a_cut_off_stream_keeps_the_whole_fragments(tmp_path: Path) -> None:
    whole = fragmented_mp4(tmp_path / "whole.mp4", frames=24).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) * 3 // 4])

    remux(cut, tmp_path / "out.mkv")

    with av.open(str(tmp_path / "out.mkv")) as container:
        assert 0 < sum(1 for _ in container.decode(video=0)) < 24


def test_remux_of_something_unreadable_is_a_client_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")

    with pytest.raises(ClientError, match="cannot write video"):
        remux(junk, tmp_path / "out.mkv")
