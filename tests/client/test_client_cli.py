"""Command-line parsing and the errors reported before (or without) a server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bgblur_client.cli import EXIT_STATUS_HELP, main, parse_param, parse_param_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("31", 31),
        ("-2", -2),
        ("2.5", 2.5),
        ("1e-3", 1e-3),
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("gaussian", "gaussian"),
        ("", ""),
    ],
)
def test_param_values_are_typed(text: str, expected: object) -> None:
    value = parse_param_value(text)

    assert value == expected
    assert type(value) is type(expected)


def test_param_splits_at_the_first_equals_sign() -> None:
    assert parse_param("blur_ksize=31") == ("blur_ksize", 31)
    assert parse_param("name=a=b") == ("name", "a=b")


@pytest.mark.parametrize("argument", ["blur_ksize", "=31"])
def test_malformed_param_is_a_usage_error(capsys: pytest.CaptureFixture, argument: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["image", "in.png", "out.png", "--param", argument])

    assert caught.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_param_given_twice_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["video", "in.mp4", "out.mp4", "--param", "blur_ksize=3", "--param", "blur_ksize=5"])

    assert caught.value.code == 2
    assert "--param blur_ksize given more than once" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--batch", "--in-flight"])
def test_counts_must_be_positive(capsys: pytest.CaptureFixture, option: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["video", "in.mp4", "out.mp4", option, "0"])

    assert caught.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["image", "video"])
def test_missing_input_is_reported_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture, unused_url: str, command: str
) -> None:
    missing = tmp_path / "missing.file"

    code = main([command, str(missing), str(tmp_path / "out.png"), "--url", unused_url])

    assert code == 2
    err = capsys.readouterr().err
    assert err == f"bgblur: error: cannot read {command} '{missing}': no such file\n"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture, unused_url: str, protocol: str
) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(b"")  # only its existence is checked before connecting

    out = tmp_path / "out.png"
    code = main(["image", str(image), str(out), "--url", unused_url, "--protocol", protocol])

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bgblur: error: cannot reach Triton at {unused_url} over {protocol}")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_module_entry_point_runs() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bgblur_client", "--help"], capture_output=True, text=True
    )

    assert completed.returncode == 0
    for command in ("image", "video", "sample-video"):
        assert command in completed.stdout


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    completed = subprocess.run(
        [sys.executable, "-m", "bgblur_client", "--version"], capture_output=True, text=True
    )

    assert completed.returncode == 0
    assert completed.stdout == f"bgblur {version('bgblur')}\n"


@pytest.mark.parametrize("command", [[], ["image"], ["video"]])
def test_help_documents_the_exit_status(command: list[str]) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bgblur_client", *command, "--help"], capture_output=True, text=True
    )

    assert completed.returncode == 0
    assert EXIT_STATUS_HELP in completed.stdout
    for line in ("  0    success", "  1    the work failed", "  2    usage error"):
        assert line in EXIT_STATUS_HELP


@pytest.mark.parametrize(
    ("output", "options", "message"),
    [
        ("out.avi", [], "unsupported extension '.avi'; use one of .mp4, .m4v, .mov, .mkv, .webm"),
        ("out", [], "unsupported extension '(none)'"),
        ("out.webm", ["--server-side"], "the server encodes H.264, which WebM cannot hold"),
        ("out.webm", ["--encoder", "x264"], "--encoder x264 makes H.264; a .webm output is VP9"),
        ("out.mp4", ["--crf", "52"], "crf must be in 0..51 for H.264, got 52"),
        ("out.mp4", ["--server-side", "--crf", "60"], "crf must be in 0..51 for H.264, got 60"),
    ],
)
def test_outputs_and_encoder_settings_are_checked_before_connecting(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    unused_url: str,
    output: str,
    options: list[str],
    message: str,
) -> None:
    clip = tmp_path / "in.mp4"
    clip.write_bytes(b"")  # only its existence is checked before the outputs

    code = main(["video", str(clip), str(tmp_path / output), "--url", unused_url, *options])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("bgblur: error: ") and message in err
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--crf", "64"], "argument --crf: expected an integer 0..63, got '64'"),
        (["--crf", "-1"], "argument --crf: expected an integer 0..63, got '-1'"),
        (["--crf", "high"], "argument --crf: expected an integer 0..63, got 'high'"),
        (["--preset", "quick"], "argument --preset: invalid choice: 'quick'"),
    ],
)
def test_encoder_settings_out_of_range_are_usage_errors(
    capsys: pytest.CaptureFixture, options: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["video", "in.mp4", "out.mp4", *options])

    assert caught.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["image", "video"])
def test_output_that_is_a_directory_is_reported_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture, unused_url: str, command: str
) -> None:
    source = tmp_path / ("in.png" if command == "image" else "in.mp4")
    source.write_bytes(b"")
    out = tmp_path / ("out.png" if command == "image" else "out.mp4")
    out.mkdir()

    code = main([command, str(source), str(out), "--url", unused_url])

    assert code == 2
    assert capsys.readouterr().err == (
        f"bgblur: error: cannot write {command} '{out}': it is a directory; give a file name\n"
    )
