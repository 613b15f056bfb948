"""Command-line parsing and the errors reported before (or without) a server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bgblur_client.cli import main, parse_param, parse_param_value


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
def test_unreachable_server_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, unused_url: str, protocol: str
) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(b"")  # only its existence is checked before connecting

    out = tmp_path / "out.png"
    code = main(["image", str(image), str(out), "--url", unused_url, "--protocol", protocol])

    assert code == 2
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
