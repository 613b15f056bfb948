"""bgblur.video.transcode without Triton: round trips, formats kept, and every kind of bad input."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")  # the GPU machine has no PyAV

from bgblur.errors import InvalidInputError  # noqa: E402
from bgblur.video import SUPPORTED_VIDEO_CODECS, VideoOptions, transcode  # noqa: E402


def identity(frames_nhwc_u8: np.ndarray) -> np.ndarray:
    return frames_nhwc_u8.copy()


def transcode_all(data: bytes, blur=identity, **kwargs) -> tuple[bytes, list]:
    chunks = list(transcode(data, blur, **kwargs))
    return b"".join(bytes(c.data) for c in chunks), chunks


class TestRoundTrip:
    def test_keeps_frame_count_size_rate_audio_and_order(self, ramp_clip_bytes, video) -> None:
        out, chunks = transcode_all(ramp_clip_bytes, options=VideoOptions(batch_size=5))

        frames_in, props_in = video.decode_rgb(ramp_clip_bytes)
        frames_out, props_out = video.decode_rgb(out)
        assert (
            props_out
            == props_in
            == {
                "frames": 24,
                "size": (192, 144),
                "rate": Fraction(24),
                "audio": ["aac"],
            }
        )
        assert chunks[-1].final and chunks[-1].frames_done == 24
        assert all(not c.final for c in chunks[:-1])
        assert video.brightness_order_ok(frames_out, frames_in)
        assert np.abs(frames_out.astype(int) - frames_in).mean() < 3.0  # codec noise only

    def test_the_blur_sees_upright_batches_and_its_output_is_encoded(
        self, ramp_clip_bytes, video
    ) -> None:
        shapes: list[tuple[int, ...]] = []

        def invert(frames_nhwc_u8: np.ndarray) -> np.ndarray:
            shapes.append(frames_nhwc_u8.shape)
            return 255 - frames_nhwc_u8

        out, _ = transcode_all(ramp_clip_bytes, invert, options=VideoOptions(batch_size=8))

        assert shapes == [(8, 144, 192, 3)] * 3
        frames_out, _ = video.decode_rgb(out)
        frames_in, _ = video.decode_rgb(ramp_clip_bytes)
        assert np.abs(frames_out.astype(int) - (255 - frames_in)).mean() < 3.0

    def test_small_chunks_stream_out_before_the_end(self, ramp_clip_bytes, video) -> None:
        options = VideoOptions(batch_size=2, chunk_bytes=4096, gop_seconds=0.25)
        out, chunks = transcode_all(ramp_clip_bytes, options=options)

        assert len(chunks) > 2
        done = [c.frames_done for c in chunks]
        assert done == sorted(done) and done[-1] == 24
        assert video.decode_rgb(out)[1]["frames"] == 24
        # a prefix of the chunks is itself a playable file (fragmented MP4)
        prefix = b"".join(bytes(c.data) for c in chunks[:-1])
        assert 0 < video.decode_rgb(prefix)[1]["frames"] <= 24

    def test_rotation_metadata_is_kept_and_frames_are_blurred_upright(
        self, tmp_path: Path, video
    ) -> None:
        frames = video.ramp_frames_nhwc_u8(96, 64, 6)
        clip = video.write_clip(tmp_path / "rot.mp4", frames, rotation=90, audio=False)
        seen: list[tuple[int, ...]] = []

        def record(frames_nhwc_u8: np.ndarray) -> np.ndarray:
            seen.append(frames_nhwc_u8.shape)
            return frames_nhwc_u8

        out, _ = transcode_all(clip.read_bytes(), record)

        assert seen[0][1:3] == (96, 64)  # turned upright: portrait
        with av.open(__import__("io").BytesIO(out)) as container:
            first = next(container.decode(video=0))
            assert first.rotation == 90
            assert (first.width, first.height) == (96, 64)

    def test_odd_size_is_cropped_to_even(self, tmp_path: Path, video) -> None:
        frames = video.ramp_frames_nhwc_u8(66, 50, 4)[:, :49, :65]
        clip = video.write_clip(
            tmp_path / "odd.mkv", np.ascontiguousarray(frames), pix_fmt="yuv444p", audio=False
        )

        out, _ = transcode_all(clip.read_bytes())

        assert video.decode_rgb(out)[1]["size"] == (64, 48)

    def test_cancelled_stops_without_a_final_chunk(self, ramp_clip_bytes) -> None:
        calls = {"n": 0}

        def cancel_after_one_batch() -> bool:
            calls["n"] += 1
            return calls["n"] > 1

        chunks = list(
            transcode(
                ramp_clip_bytes,
                identity,
                options=VideoOptions(batch_size=4),
                cancelled=cancel_after_one_batch,
            )
        )

        assert not any(c.final for c in chunks)


class TestBadInput:
    def test_empty(self) -> None:
        with pytest.raises(InvalidInputError, match="VIDEO is empty"):
            transcode_all(b"")

    def test_not_a_video(self) -> None:
        noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
        with pytest.raises(InvalidInputError, match="not a readable video file"):
            transcode_all(noise)

    def test_truncated_mp4_without_its_index(self, ramp_clip_bytes) -> None:
        with pytest.raises(InvalidInputError, match="not a readable video file"):
            transcode_all(ramp_clip_bytes[: len(ramp_clip_bytes) // 2])

    def test_truncated_faststart_mp4(self, tmp_path: Path, video) -> None:
        clip = video.write_clip(
            tmp_path / "fast.mp4", video.ramp_frames_nhwc_u8(), options={"movflags": "faststart"}
        )
        data = clip.read_bytes()
        with pytest.raises(InvalidInputError, match="truncated: its header declares 24 frames"):
            transcode_all(data[: int(len(data) * 0.7)])

    def test_corrupt_middle(self, tmp_path: Path, video) -> None:
        clip = video.write_clip(
            tmp_path / "fast.mp4", video.ramp_frames_nhwc_u8(), options={"movflags": "faststart"}
        )
        data = bytearray(clip.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 8000] = bytes(8000)
        with pytest.raises(InvalidInputError, match=r"VIDEO is (corrupt|truncated)"):
            transcode_all(bytes(data))

    def test_a_size_change_mid_stream_is_refused(self, tmp_path: Path, video) -> None:
        # raw H.264: a 64x48 sequence, then a 96x64 one
        first = video.write_clip(
            tmp_path / "a.h264", video.ramp_frames_nhwc_u8(64, 48, 3), audio=False
        )
        second = video.write_clip(
            tmp_path / "b.h264", video.ramp_frames_nhwc_u8(96, 64, 3), audio=False
        )
        message = "VIDEO changes size mid-stream (64x48 -> 96x64); not supported"
        with pytest.raises(InvalidInputError, match=f"^{re.escape(message)}$"):
            transcode_all(first.read_bytes() + second.read_bytes())

    def test_a_client_only_decoder_is_refused(self, ramp_clip_bytes) -> None:
        with pytest.raises(InvalidInputError, match=r"one of \('pyav', 'nvdec'\), got 'dali'"):
            transcode_all(ramp_clip_bytes, decoder="dali")

    def test_unsupported_codec_names_it(self, tmp_path: Path, video) -> None:
        frames = video.ramp_frames_nhwc_u8(32, 32, 2)
        clip = video.write_clip(
            tmp_path / "ffv1.mkv", frames, codec="ffv1", pix_fmt="yuv420p", audio=False
        )
        with pytest.raises(InvalidInputError, match="unsupported video codec 'ffv1'; supported: "):
            transcode_all(clip.read_bytes())
        assert "h264" in SUPPORTED_VIDEO_CODECS

    def test_audio_only(self, tmp_path: Path) -> None:
        path = tmp_path / "tone.m4a"
        with av.open(str(path), "w") as container:
            sound = container.add_stream("aac", rate=48_000)
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 48_000, 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
        with pytest.raises(InvalidInputError, match="no video stream"):
            transcode_all(path.read_bytes())

    def test_uint8_array_input_is_accepted_other_dtypes_are_not(self, ramp_clip_bytes) -> None:
        out, _ = transcode_all(np.frombuffer(ramp_clip_bytes, np.uint8))
        assert out
        with pytest.raises(InvalidInputError, match="1-D uint8"):
            transcode_all(np.zeros((4, 4), np.uint8))

    @pytest.mark.parametrize(
        ("parameters", "message"),
        [
            ({"batch_size": 9}, "batch_size"),
            ({"batch_size": True}, "batch_size"),
            ({"crf": 52}, "crf"),
            ({"gop_seconds": 0}, "gop_seconds"),
            ({"chunk_bytes": 10}, "chunk_bytes"),
        ],
    )
    def test_options_are_validated(self, parameters, message) -> None:
        with pytest.raises(InvalidInputError, match=message):
            VideoOptions.split_parameters(parameters)

    def test_split_parameters_leaves_blur_parameters(self) -> None:
        options, rest = VideoOptions.split_parameters(
            {"batch_size": 2, "gop_seconds": 1, "blur_sigma": 3.0}
        )
        assert options == VideoOptions(batch_size=2, gop_seconds=1.0)
        assert rest == {"blur_sigma": 3.0}
