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


def test_unknown_model_is_exit_1_naming_the_model(
    triton_server, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.png"

    code = bgblur("image", photo, out, "--url", triton_server.grpc_url, "--model", "no_such_model")

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("bgblur: error: model 'no_such_model' is not ready on ")
    # The embedded server restricts its repository API (docs/reliability.md): no model list.
    assert "the server does not list its models to clients" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_parameter_is_exit_1_with_the_servers_message(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture, protocol: str
) -> None:
    out = tmp_path / "out.mp4"

    url = url_for(triton_server, protocol)

    code = bgblur("video", clip, out, "--url", url, "--protocol", protocol, "--param=blur_ksize=4")

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("bgblur: error: server rejected the request: ")
    assert "blur_ksize" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no output and no partial file left


def test_corrupt_video_is_exit_1_naming_the_file(
    triton_server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)

    code = bgblur("video", corrupt, tmp_path / "out.mp4", "--url", triton_server.grpc_url)

    assert code == 1
    assert capsys.readouterr().err.startswith(f"bgblur: error: cannot read video '{corrupt}': ")


# ---- a failed run leaves an existing output as it was ---------------------------------------


@pytest.mark.parametrize("server_side", [False, True], ids=["client-side", "server-side"])
def test_failed_video_run_keeps_an_existing_output(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture, server_side: bool
) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier result")
    side = ["--server-side"] if server_side else []

    code = bgblur(
        "video", clip, out, "--url", triton_server.grpc_url, "--param=blur_ksize=4", *side
    )

    assert code == 1
    assert "blur_ksize" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no partial file


def test_failed_image_run_keeps_existing_outputs(
    triton_server, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, mask = tmp_path / "out.png", tmp_path / "mask.png"
    out.write_bytes(b"an earlier result")
    mask.mkdir()  # a mask that cannot be written

    code = bgblur("image", photo, out, "--mask", mask, "--url", triton_server.grpc_url)

    assert code == 2
    assert capsys.readouterr().err == (
        f"bgblur: error: cannot write image '{mask}': it is a directory; give a file name\n"
    )
    assert out.read_bytes() == b"an earlier result"


def test_image_bad_parameter_keeps_an_existing_output(
    triton_server, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.png"
    out.write_bytes(b"an earlier result")

    code = bgblur(
        "image",
        photo,
        out,
        "--url",
        triton_server.http_url,
        "--protocol",
        "http",
        "--param",
        "blur_ksize=4",
    )

    assert code == 1
    assert "blur_ksize" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_successful_run_replaces_an_existing_output(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier result")

    code = bgblur("video", clip, out, "--url", triton_server.grpc_url, "--no-progress")

    assert code == 0, capsys.readouterr().err
    assert video_properties(out)["frames"] == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


# ---- --server-side honours the output's container --------------------------------------------


def container_format(path: Path) -> str:
    with av.open(str(path)) as container:
        return container.format.name


@pytest.mark.parametrize(("suffix", "format_name"), [(".mkv", "matroska"), (".mov", "mov")])
def test_server_side_output_is_in_the_container_its_extension_names(
    triton_server,
    clip: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    suffix: str,
    format_name: str,
) -> None:
    out = tmp_path / f"out{suffix}"

    code = bgblur("video", clip, out, "--server-side", "--url", triton_server.grpc_url)

    assert code == 0, capsys.readouterr().err
    with out.open("rb") as head:  # the file itself, not only what FFmpeg makes of it
        magic = head.read(12)
    if suffix == ".mkv":
        assert magic.startswith(b"\x1a\x45\xdf\xa3")  # EBML
    else:
        assert magic[4:8] in (b"ftyp", b"moov", b"wide") and b"qt" in magic
    assert format_name in container_format(out).split(",")
    expected = {"frames": 30, "size": (WIDTH, HEIGHT), "rate": Fraction(FPS), "audio": ["aac"]}
    assert video_properties(out) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_server_side_webm_is_refused_before_anything_is_sent(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.webm"

    code = bgblur("video", clip, out, "--server-side", "--url", triton_server.grpc_url)

    assert code == 2
    err = capsys.readouterr().err
    assert "the server encodes H.264, which WebM cannot hold" in err
    assert "drop --server-side to encode VP9 here" in err
    assert list(tmp_path.iterdir()) == []


# ---- encoder options, the same on both paths; WebM ------------------------------------------


@pytest.mark.parametrize("server_side", [False, True], ids=["client-side", "server-side"])
def test_crf_and_preset_reach_the_encoder(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture, server_side: bool
) -> None:
    side = ["--server-side"] if server_side else []
    sizes = {}
    for crf in (12, 40):
        out = tmp_path / f"crf{crf}.mp4"
        code = bgblur(
            *("video", clip, out, "--url", triton_server.grpc_url, "--no-progress", *side),
            *("--crf", crf, "--preset", "veryfast"),
        )
        assert code == 0, capsys.readouterr().err
        assert video_properties(out)["frames"] == 30
        sizes[crf] = out.stat().st_size
    assert sizes[40] < sizes[12] / 2  # a CRF of 40 compresses far harder than one of 12


def test_server_side_refuses_a_bad_preset_parameter(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.mp4"
    url = triton_server.grpc_url

    code = bgblur("video", clip, out, "--server-side", "--url", url, "--param", "preset=quick")

    assert code == 1
    assert "parameter 'preset' must be one of ultrafast, superfast" in capsys.readouterr().err
    assert not out.exists()


def test_webm_output_is_vp9_with_opus_audio(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.webm"

    code = bgblur(
        "video",
        clip,
        out,
        "--url",
        triton_server.grpc_url,
        "--crf",
        40,
        "--preset",
        "ultrafast",
        "--no-progress",
    )

    assert code == 0, capsys.readouterr().err
    assert "encoder vp9: libvpx-vp9 for WebM" in capsys.readouterr().out
    with av.open(str(out)) as container:
        assert "webm" in container.format.name.split(",")
        assert container.streams.video[0].codec_context.name == "vp9"
    props = video_properties(out)
    assert props["frames"] == 30 and props["size"] == (WIDTH, HEIGHT)
    assert props["audio"] == ["opus"]  # the AAC source re-encoded: WebM holds Opus or Vorbis


# ---- what the errors say ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "port", "message"),
    [
        ("http", "grpc", "answers gRPC, not HTTP: use --protocol grpc or the HTTP port"),
        ("grpc", "http", "answers HTTP, not gRPC: use --protocol http or the gRPC port"),
    ],
)
def test_the_wrong_port_for_the_protocol_is_named(
    triton_server,
    photo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    protocol: str,
    port: str,
    message: str,
) -> None:
    url = url_for(triton_server, port)

    code = bgblur("image", photo, tmp_path / "out.png", "--url", url, "--protocol", protocol)

    assert code == 1
    err = capsys.readouterr().err
    assert err == f"bgblur: error: {url} {message} (Triton's defaults: HTTP 8000, gRPC 8001)\n"


def test_server_side_on_the_http_port_is_named(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = triton_server.http_url

    code = bgblur("video", clip, tmp_path / "out.mp4", "--server-side", "--url", url)

    assert code == 1
    assert f"{url} answers HTTP, not gRPC" in capsys.readouterr().err


@pytest.mark.parametrize("server_side", [False, True], ids=["client-side", "server-side"])
def test_a_model_served_on_request_names_how_to_serve_it(
    triton_server, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture, server_side: bool
) -> None:
    side = ["--server-side"] if server_side else []
    url = triton_server.grpc_url

    code = bgblur(
        "video", clip, tmp_path / "o.mp4", "--url", url, "--model", "background_blur_direct", *side
    )

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("bgblur: error: model 'background_blur_direct' is not ready on ")
    assert "start the server with --direct-model" in err


@pytest.mark.parametrize("command", ["image", "video"])
def test_a_directory_as_input_says_so(
    triton_server, tmp_path: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    code = bgblur(command, tmp_path, tmp_path / "out.png", "--url", triton_server.grpc_url)

    assert code == 2
    a_file = "an image file" if command == "image" else "a video file"
    assert capsys.readouterr().err == (
        f"bgblur: error: cannot read {command} '{tmp_path}': it is a directory, not {a_file}\n"
    )


def cupy_missing() -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.skipif(not cupy_missing(), reason="CuPy is installed here")
@pytest.mark.parametrize("command", ["image", "video"])
def test_cuda_shared_memory_without_cupy_names_what_to_install(
    triton_server, clip: Path, photo: Path, tmp_path: Path, command: str
) -> None:
    source, out = (photo, "out.png") if command == "image" else (clip, "out.mp4")

    completed = subprocess.run(
        [
            *(sys.executable, "-m", "bgblur_client", command, str(source), str(tmp_path / out)),
            *("--url", triton_server.grpc_url, "--shared-memory", "cuda"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 2
    assert completed.stderr.startswith("bgblur: error: --shared-memory cuda needs CuPy")
    assert "pip install cupy-cuda12x" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# Ctrl-C of a video run (client side and --server-side): tests/video/test_interrupt.py
