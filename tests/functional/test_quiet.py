"""Normal use prints no warnings: ``bgblur image`` against the real (embedded, CPU) server says
what it did on stdout and nothing on stderr, and the CPU server's log has no CUDA failures and
no Python warnings.

The messages guarded against, each handled where it arises: setuptools' ``pkg_resources is
deprecated`` (imported by tritonclient's shared-memory module: bgblur_client.shm), libpng's
``iCCP: known incorrect sRGB profile`` (a PNG's colour profile: bgblur_client.png), Triton's
attempts at CUDA, NVML and DCGM on a host without a GPU (pinned memory, GPU metrics: the
launcher's CPU flags), and torch's ``The given NumPy array is not writable`` (Triton's input
tensors as read-only NumPy arrays handed to torch: bgblur.serving.triton_io).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bgblur.server.launcher import TritonServer

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data"

# Triton's GPU build calls CUDA unconditionally in two places, whatever the flags: at start the
# CUDA block manager asks libcuda for its allocation granularity, and every ensemble creates a
# CUDA stream when it loads. On a host without a CUDA driver each logs one error line; nothing
# uses either on a CPU server. Every other CUDA, NVML or DCGM line is a failure.
UNAVOIDABLE_CORE_LINES = (
    re.compile(r'server\.cc:\d+\] "CudaDriverHelper has not been initialized\."'),
    re.compile(r'ensemble_scheduler\.cc:\d+\] "unable to create stream for \w+: '),
)
CUDA_WORDS = re.compile(r"\b(cuda|cuinit|libcuda|nvml|dcgm)", re.IGNORECASE)
# Triton's warning and error lines (glog: W/E, date, time), and other programs' error lines
PROBLEM_LINE = re.compile(r"^([EW]\d{4} |.*\berror\b)", re.IGNORECASE)
PYTHON_WARNING = re.compile(r"\b\w*Warning: ")


def bgblur_command() -> list[str]:
    """The ``bgblur`` console script of this environment (``python -m bgblur_client`` where
    the client is not installed with its scripts)."""
    script = Path(sys.executable).with_name("bgblur")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bgblur_client"]


def skimage_astronaut() -> Path:
    """scikit-image's portrait: a PNG with the faulty sRGB profile libpng warns about."""
    skimage_data = pytest.importorskip("skimage.data")
    path = Path(skimage_data.data_dir) / "astronaut.png"
    assert b"iCCP" in path.read_bytes()[:4096]
    return path


@pytest.mark.parametrize("source", ["profiled png", "committed png"])
def test_bgblur_image_prints_no_warning(
    triton_server: TritonServer, tmp_path: Path, source: str
) -> None:
    photo = skimage_astronaut() if source == "profiled png" else DATA / "selfie_general_camera.png"
    out, mask = tmp_path / "out.png", tmp_path / "mask.png"
    completed = subprocess.run(
        [
            *bgblur_command(),
            *("image", str(photo), str(out), "--mask", str(mask)),
            *("--url", triton_server.grpc_url, "--preview", str(tmp_path / "preview.png")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("blurred 1 frame in ")
    assert "warning" not in completed.stderr.lower(), completed.stderr
    assert "deprecat" not in completed.stderr.lower(), completed.stderr
    assert completed.stderr == ""
    assert cv2.imread(str(out)).shape == cv2.imread(str(photo)).shape


def test_the_cpu_server_log_has_no_cuda_failures_or_warnings(
    triton_server: TritonServer,
) -> None:
    # requests of each kind first: some messages come with the first request, not at start
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        for shape in ((1, 24, 32, 3), (3, 48, 64, 3)):
            frames = grpcclient.InferInput("FRAMES", list(shape), "UINT8")
            frames.set_data_from_numpy(np.full(shape, 128, np.uint8))
            client.infer(
                "background_blur",
                [frames],
                outputs=[grpcclient.InferRequestedOutput(n) for n in ("BLURRED", "MASK")],
            )
    finally:
        client.close()
    assert triton_server.device == "cpu"
    log = triton_server.log_path.read_text(errors="replace").splitlines()
    assert any("successfully loaded 'background_blur'" in line for line in log)
    cuda = [
        line
        for line in log
        if CUDA_WORDS.search(line)
        and PROBLEM_LINE.search(line)
        and not any(known.search(line) for known in UNAVOIDABLE_CORE_LINES)
    ]
    assert cuda == [], "\n".join(cuda)
    warnings = [line for line in log if PYTHON_WARNING.search(line)]
    assert warnings == [], "\n".join(warnings)


def test_the_log_check_finds_what_it_looks_for() -> None:
    """The patterns above against lines a CPU server logs without the launcher's CPU flags, and
    torch's warning as the stub logs it."""
    before = [
        'W1207 11:43:56.578667 5573 pinned_memory_manager.cc:273] "Unable to allocate pinned '
        "system memory, pinned memory pool will not be available: CUDA driver version is "
        'insufficient for CUDA runtime version"',
        "Error: Failed to initialize NVML",
        'W1207 11:44:12.150217 5573 metrics.cc:798] "DCGM unable to start: DCGM initialization '
        'error"',
    ]
    allowed = [
        'E1207 11:43:56.578809 5573 server.cc:241] "CudaDriverHelper has not been initialized."',
        'E1207 11:44:12.146141 5573 ensemble_scheduler.cc:1468] "unable to create stream for '
        'background_blur: CUDA driver version is insufficient for CUDA runtime version"',
        'I1207 11:43:56.578735 5573 cuda_memory_manager.cc:117] "CUDA memory pool disabled"',
    ]
    for line in before:
        assert CUDA_WORDS.search(line) and PROBLEM_LINE.search(line), line
        assert not any(known.search(line) for known in UNAVOIDABLE_CORE_LINES), line
    for line in allowed:
        flagged = CUDA_WORDS.search(line) and PROBLEM_LINE.search(line)
        assert not flagged or any(known.search(line) for known in UNAVOIDABLE_CORE_LINES), line
    torch_warning = (
        "backends/bgblur/serving/triton_io.py:84: UserWarning: The given NumPy array is not "
        "writable, and PyTorch does not support non-writable tensors."
    )
    assert PYTHON_WARNING.search(torch_warning)
