"""GPU decode paths (``gpu`` marker, H100): NVDEC (PyNvVideoCodec) and DALI, behind the decoder
interface of ``bgblur_client.decoders``, give the CPU decoder's frames within codec tolerance and
its batches and timestamps; the transcoder decodes with NVDEC.

The reference decode is PyAV where it is installed, else OpenCV's FFmpeg (the GPU machine has
opencv-python-headless but no PyAV); both convert with BT.601 limited range like ours here. The
clip is H.264 BT.601 written by OpenCV... or PyAV; both give yuv420p.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from bgblur_client.decoders import DecodedBatch, DecodeSettings, VideoDecodeError


def _module_present(name: str) -> bool:
    """Whether ``name`` can be imported (a missing parent package counts as absent)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


pytestmark = pytest.mark.gpu

needs_nvdec = pytest.mark.skipif(
    importlib.util.find_spec("PyNvVideoCodec") is None, reason="needs PyNvVideoCodec"
)
needs_dali = pytest.mark.skipif(not _module_present("nvidia.dali"), reason="needs nvidia-dali")
# Two decoders of one H.264 stream give the same YUV; the RGB conversions differ in chroma
# upsampling (nearest here, bilinear in swscale), so compare on the mean and the 99th percentile.
MEAN_TOLERANCE = 2.5
P99_TOLERANCE = 24


def reference_rgb(path: Path) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 RGB decoded on the CPU (PyAV, else OpenCV)."""
    if importlib.util.find_spec("av") is not None:
        import av

        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


@pytest.fixture(scope="module")
def h264_clip(tmp_path_factory: pytest.TempPathFactory, video) -> Path:
    path = tmp_path_factory.mktemp("gpu") / "clip.mp4"
    if importlib.util.find_spec("av") is not None:
        return video.write_clip(path, video.ramp_frames_nhwc_u8(320, 240, 24), audio=False)
    golden = Path(__file__).parents[1] / "data" / "video_h264_320x240.mp4"
    if not golden.exists():
        pytest.skip("no PyAV to write an H.264 clip and no stored golden clip")
    return golden


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.mean() < MEAN_TOLERANCE, diff.mean()
    assert np.percentile(diff, 99) <= P99_TOLERANCE


def gpu_frames(batches, cupy) -> np.ndarray:
    """The batches' frames on the host, ``[N, H, W, 3]`` uint8."""
    return np.concatenate([cupy.asnumpy(b.frames_nhwc_u8) for b in batches])


@needs_nvdec
def test_nvdec_frames_equal_the_cpu_decoders(cupy, h264_clip: Path) -> None:
    from bgblur.video.nvdec import decode_nvdec

    batches = list(decode_nvdec(h264_clip, DecodeSettings(batch_frames=8)))

    assert all(isinstance(b, DecodedBatch) and b.on_gpu for b in batches)
    assert all(b.frames_nhwc_u8.flags.c_contiguous for b in batches)
    assert_close(gpu_frames(batches, cupy), reference_rgb(h264_clip))


@needs_nvdec
def test_nvdec_reads_a_file_its_bytes_and_a_reader_alike(cupy, h264_clip: Path) -> None:
    import io

    from bgblur.video.nvdec import decode_nvdec

    data = h264_clip.read_bytes()
    settings = DecodeSettings(batch_frames=4)
    from_file = gpu_frames(decode_nvdec(h264_clip, settings), cupy)
    from_bytes = gpu_frames(decode_nvdec(data, settings), cupy)
    from_reader = gpu_frames(decode_nvdec(lambda: io.BytesIO(data), settings), cupy)

    np.testing.assert_array_equal(from_file, from_bytes)
    np.testing.assert_array_equal(from_file, from_reader)


@needs_nvdec
def test_nvdec_gives_the_pyav_decoders_batches_pts_and_turns(cupy, h264_clip: Path) -> None:
    pytest.importorskip("av")
    from bgblur.video.nvdec import decode_nvdec
    from bgblur_client.decoders import decode_pyav

    settings = DecodeSettings(batch_frames=5, quarter_turns=1)
    gpu = list(decode_nvdec(h264_clip, settings))
    cpu = list(decode_pyav(h264_clip, settings))

    assert [len(b) for b in gpu] == [len(b) for b in cpu]
    assert [b.pts for b in gpu] == [b.pts for b in cpu]
    assert_close(gpu_frames(gpu, cupy), np.concatenate([b.frames_nhwc_u8 for b in cpu]))


@needs_nvdec
def test_nvdec_refuses_a_size_change_mid_stream(cupy, tmp_path: Path, video) -> None:
    pytest.importorskip("av")  # PyAV writes the two raw H.264 sequences
    from bgblur.video.nvdec import decode_nvdec

    first = video.write_clip(tmp_path / "a.h264", video.ramp_frames_nhwc_u8(64, 48, 3), audio=False)
    second = video.write_clip(
        tmp_path / "b.h264", video.ramp_frames_nhwc_u8(96, 64, 3), audio=False
    )
    stream = first.read_bytes() + second.read_bytes()

    with pytest.raises(VideoDecodeError, match=r"^VIDEO changes size mid-stream \(64x48 -> 96x64"):
        list(decode_nvdec(stream, DecodeSettings(batch_frames=2, label="VIDEO")))


@needs_dali
def test_dali_frames_equal_the_cpu_decoders(cupy, h264_clip: Path) -> None:
    pytest.importorskip("av")  # the DALI decoder reads timestamps with PyAV
    from bgblur_client.decoders import decode_video, display_timestamps

    batches = list(decode_video("dali", h264_clip, DecodeSettings(batch_frames=8)))

    assert [p for b in batches for p in b.pts] == display_timestamps(h264_clip)
    assert_close(gpu_frames(batches, cupy), reference_rgb(h264_clip))


@needs_nvdec
def test_transcode_with_nvdec_equals_pyav(cupy, h264_clip: Path, video) -> None:
    pytest.importorskip("av")  # the encoder is PyAV's libx264 (the H100 has no NVENC)
    from bgblur.video import transcode

    data = h264_clip.read_bytes()
    outputs = {}
    for decoder in ("pyav", "nvdec"):
        chunks = transcode(data, lambda f: f, decoder=decoder)
        outputs[decoder] = video.decode_rgb(b"".join(bytes(c.data) for c in chunks))
    assert outputs["nvdec"][1] == outputs["pyav"][1]
    assert_close(outputs["nvdec"][0], outputs["pyav"][0])
