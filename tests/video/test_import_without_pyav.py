"""The video model's modules import without PyAV: a server without it loads every other model.

Triton's ``--exit-on-error`` (the default) stops the whole server when one model fails to load,
so an import of PyAV at module level anywhere on the video model's import path takes the image
and frames models down with it on a machine that has no PyAV. Requests that need PyAV are
refused at run time instead (``ModelUnavailableError``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# sys.modules[name] = None makes ``import name`` raise ImportError, as on a machine without it.
_WITHOUT_PYAV = (
    "import sys\n"
    "for name in ('av', 'av.video', 'av.video.reformatter'):\n"
    "    sys.modules[name] = None\n"
)


@pytest.mark.parametrize(
    "module",
    [
        "bgblur.video",
        "bgblur.video.serving",
        "bgblur.video.transcode",
        "bgblur.video.encoders",
        "bgblur_client.encoding",
        "bgblur_client.decoders",
    ],
)
def test_module_imports_without_pyav(module: str) -> None:
    code = f"{_WITHOUT_PYAV}import {module}\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_video_model_adapter_imports_without_pyav() -> None:
    model_py = REPO / "model_repository" / "background_blur_video" / "1" / "model.py"
    code = (
        f"{_WITHOUT_PYAV}import importlib.util, types\n"
        "name = 'triton_python_backend_utils'\n"
        "sys.modules[name] = types.ModuleType(name)\n"
        f"spec = importlib.util.spec_from_file_location('video_model', {str(model_py)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert hasattr(module, 'TritonPythonModel')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_guard_against_pyav_really_blocks_it() -> None:
    """The test's own premise: with the entries set, ``import av`` fails."""
    code = f"{_WITHOUT_PYAV}import av\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr or "ModuleNotFoundError" in result.stderr
