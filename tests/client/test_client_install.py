"""The client as its own distribution: ``pip install ./client`` in a fresh virtual environment.

Only the client and its dependencies go in (no torch, no server library ``bgblur``); the
installed ``bgblur`` command then blurs an image and a video through the session's real
server. Pins come from the repository's requirements.txt (as constraints, without extras,
which pip's constraints cannot carry), so pip's cache of the development environment serves
most downloads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120


def run(command: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        **kwargs,
    )


def constraints_from_requirements(target: Path) -> Path:
    """requirements.txt's pins as a constraints file (``name[extras]==v`` -> ``name==v``)."""
    lines = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(re.sub(r"\[[^\]]*\]", "", line))
    target.write_text("\n".join(lines) + "\n")
    return target


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only ``./client`` (copied, so the build leaves the tree clean)."""
    base = tmp_path_factory.mktemp("client-venv")
    source = base / "client"
    shutil.copytree(
        ROOT / "client",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    constraints = constraints_from_requirements(base / "constraints.txt")
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source), "-c", str(constraints)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.mark.slow
def test_the_client_installs_without_torch_or_the_server_library(client_venv: Path) -> None:
    python = client_venv / "bin" / "python"

    for module in ("torch", "bgblur", "skimage"):
        absent = run([python, "-c", f"import {module}"])
        assert absent.returncode == 1
        assert f"ModuleNotFoundError: No module named '{module}'" in absent.stderr

    every_module = (
        "import importlib, pkgutil, bgblur_client\n"
        "names = [m.name for m in pkgutil.iter_modules(bgblur_client.__path__)]\n"
        "for name in names:\n"
        "    if name != '__main__':\n"
        "        importlib.import_module(f'bgblur_client.{name}')\n"
        "print(len(names))\n"
    )
    imported = run([python, "-c", every_module])
    assert imported.returncode == 0, imported.stderr
    assert int(imported.stdout) >= 10

    version = run([client_venv / "bin" / "bgblur", "--version"])
    assert version.returncode == 0
    assert version.stdout == "bgblur 0.1.0\n"


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_installed_client_blurs_an_image(
    client_venv: Path, triton_server, tmp_path: Path, protocol: str
) -> None:
    photo = DATA / "selfie_general_astronaut.png"
    out, mask = tmp_path / "out.jpg", tmp_path / "mask.png"
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url

    completed = run(
        [
            *(client_venv / "bin" / "bgblur", "image", photo, out, "--mask", mask),
            *("--url", url, "--protocol", protocol),
        ],
        cwd=tmp_path,  # not the repository: nothing of it on sys.path
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("blurred 1 frame in ")
    height, width = cv2.imread(str(photo)).shape[:2]
    assert cv2.imread(str(out)).shape == (height, width, 3)
    assert cv2.imread(str(mask), cv2.IMREAD_UNCHANGED).shape == (height, width)


@pytest.mark.slow
def test_the_installed_client_blurs_a_video_and_says_why_it_encodes_with_x264(
    client_venv: Path, triton_server, tmp_path: Path
) -> None:
    clip = DATA / "video_h264_320x240.mp4"
    out = tmp_path / "out.mkv"

    completed = run(
        [client_venv / "bin" / "bgblur", "video", clip, out, "--url", triton_server.grpc_url],
        cwd=tmp_path,
    )

    assert completed.returncode == 0, completed.stderr
    assert "encoder x264: NVENC needs the bgblur server library" in completed.stdout
    with av.open(str(out)) as result, av.open(str(clip)) as source:
        assert sum(1 for _ in result.decode(video=0)) == sum(1 for _ in source.decode(video=0))


@pytest.mark.slow
def test_the_sample_clip_without_scikit_image_names_what_to_install(
    client_venv: Path, tmp_path: Path
) -> None:
    completed = run(
        [client_venv / "bin" / "bgblur", "sample-video", tmp_path / "s.mp4"], cwd=tmp_path
    )

    assert completed.returncode == 2
    assert completed.stderr == (
        "bgblur: error: the sample photo comes from scikit-image, which is not installed: "
        "pip install scikit-image (or the client's 'samples' extra)\n"
    )
    assert list(tmp_path.iterdir()) == []
