"""The ``bgblur`` command line end to end, against the real Triton server (CPU).

Clips are small (320x240, 1 s) so the whole module stays fast on a 2-core CI machine.
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import pytest

from bgblur_client.cli import main
from bgblur_client.samples import make_sample_video, sample_image_rgb

WIDTH, HEIGHT, SECONDS, FPS = 320, 240, 1.0, 30


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return make_sample_video(path, width=WIDTH, height=HEIGHT, seconds=SECONDS, fps=FPS)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    cv2.imwrite(str(path), cv2.cvtColor(sample_image_rgb()[::2, ::2], cv2.COLOR_RGB2BGR))
    return path


def video_properties(path: Path) -> dict[str, object]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        return {
            "frames": frames,
            "size": (video.width, video.height),
            "rate": video.average_rate,
            "audio": [stream.codec_context.name for stream in container.streams.audio],
        }


def bgblur(*args: object) -> int:
    """Run the CLI in this process; returns its exit status."""
    return main([str(arg) for arg in args])


def url_for(server: object, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_video_round_trip_keeps_frames_size_rate_and_audio(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture, protocol: str
) -> None:
    out = tmp_path / "blurred.mp4"
    url = url_for(triton_server, protocol)

    code = bgblur("video", clip, out, "--url", url, "--protocol", protocol, "--batch", 4)

    assert code == 0, capsys.readouterr().err
    expected = {"frames": 30, "size": (WIDTH, HEIGHT), "rate": Fraction(FPS), "audio": ["aac"]}
    assert video_properties(clip) == expected
    assert video_properties(out) == expected
    assert capsys.readouterr().out.startswith("blurred 30 frames in ")


def test_video_mask_and_preview_outputs(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, mask, preview = tmp_path / "out.mp4", tmp_path / "mask.mp4", tmp_path / "preview.png"

    code = bgblur(
        *("video", clip, out, "--url", triton_server.grpc_url, "--batch", 8, "--in-flight", 3),
        *("--mask", mask, "--preview", preview),
    )

    assert code == 0, capsys.readouterr().err
    assert video_properties(mask) | {"audio": None} == video_properties(out) | {"audio": None}
    assert video_properties(mask)["audio"] == []
    assert cv2.imread(str(preview)).shape == (HEIGHT, 2 * WIDTH, 3)


def test_image_round_trip_with_mask_and_preview_via_python_m(
    triton_server, photo: Path, tmp_path: Path
) -> None:
    out, mask, preview = tmp_path / "out.jpg", tmp_path / "mask.png", tmp_path / "preview.png"

    completed = subprocess.run(
        [
            *(sys.executable, "-m", "bgblur_client", "image", str(photo), str(out)),
            *("--url", triton_server.http_url, "--protocol", "http", "--param", "blur_ksize=31"),
            *("--mask", str(mask), "--preview", str(preview)),
        ],
        capture_output=True,
        text=True,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("blurred 1 frame in ")
    assert cv2.imread(str(out)).shape == (256, 256, 3)
    assert cv2.imread(str(mask), cv2.IMREAD_UNCHANGED).shape == (256, 256)
    assert cv2.imread(str(preview)).shape == (256, 512, 3)


def test_unknown_model_is_exit_2_naming_the_model(
    triton_server, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.png"

    code = bgblur("image", photo, out, "--url", triton_server.grpc_url, "--model", "no_such_model")

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("bgblur: error: model 'no_such_model' is not ready on ")
    # The embedded server restricts its repository API (docs/reliability.md): no model list.
    assert "the server does not list its models to clients" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_parameter_is_exit_2_with_the_servers_message(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture, protocol: str
) -> None:
    out = tmp_path / "out.mp4"

    url = url_for(triton_server, protocol)

    code = bgblur("video", clip, out, "--url", url, "--protocol", protocol, "--param=blur_ksize=4")

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("bgblur: error: server rejected the request: ")
    assert "blur_ksize" in err
    assert "Traceback" not in err
    assert not out.exists()  # the partial output is removed


def test_corrupt_video_is_exit_2_naming_the_file(
    triton_server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)

    code = bgblur("video", corrupt, tmp_path / "out.mp4", "--url", triton_server.grpc_url)

    assert code == 2
    assert capsys.readouterr().err.startswith(f"bgblur: error: cannot read video '{corrupt}': ")


# Ctrl-C of a video run (client side and --server-side): tests/video/test_interrupt.py
