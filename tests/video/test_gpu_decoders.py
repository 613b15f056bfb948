"""GPU decode paths (``gpu`` marker, H100): NVDEC (PyNvVideoCodec) and DALI frames equal the
CPU decoder's within codec tolerance; the served video model decodes with NVDEC.

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


@needs_nvdec
def test_nvdec_frames_equal_the_cpu_decoders(cupy, h264_clip: Path) -> None:
    from bgblur.video.nvdec import nvdec_batches

    batches = list(nvdec_batches(h264_clip, 0, 8, 0, "bt601", False))
    frames = np.concatenate([cupy.asnumpy(b.frames_nhwc_u8) for b in batches])
    assert_close(frames, reference_rgb(h264_clip))


@needs_nvdec
def test_nvdec_from_memory_equals_from_file(cupy, h264_clip: Path) -> None:
    from bgblur.video.nvdec import nvdec_batches

    from_file = [
        cupy.asnumpy(b.frames_nhwc_u8) for b in nvdec_batches(h264_clip, 0, 4, 0, "bt601", False)
    ]
    data = h264_clip.read_bytes()
    from_bytes = [
        cupy.asnumpy(b.frames_nhwc_u8) for b in nvdec_batches(data, 0, 4, 0, "bt601", False)
    ]
    np.testing.assert_array_equal(np.concatenate(from_file), np.concatenate(from_bytes))


@needs_dali
def test_dali_frames_equal_the_cpu_decoders(cupy, h264_clip: Path) -> None:
    pytest.importorskip("av")  # the client path reads timestamps with PyAV
    from bgblur_client.video_decoders import gpu_rgb_batches

    batches = list(
        gpu_rgb_batches(
            "dali",
            h264_clip,
            batch_size=8,
            quarter_turns=0,
            color_matrix="bt601",
            full_range=False,
        )
    )
    frames = np.concatenate([cupy.asnumpy(f) for f, _ in batches])
    assert_close(frames, reference_rgb(h264_clip))


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
