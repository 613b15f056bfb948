"""Stopping a video mid-file, on the real Triton server (CPU): Ctrl-C in a client-side
``bgblur video`` run, and a server-side stream cancelled or dropped by its client.

The clip is long enough (360 frames) that none of these runs can finish before it is stopped;
its frames repeat a 24-step brightness ramp, so the order of a partial output can be checked.
"""

from __future__ import annotations

import contextlib
import queue
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")  # the GPU machine has no PyAV
import tritonclient.grpc as grpcclient  # noqa: E402

from bgblur_client.transport import BlurClient  # noqa: E402

VIDEO_MODEL = "background_blur_video"
RAMP, REPEATS = 24, 15  # 360 frames at 24 frames/s
FRAMES = RAMP * REPEATS
EXIT_INTERRUPTED = 130  # bgblur_client.cli: the shell's convention for SIGINT (128 + 2)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory, video) -> Path:
    frames = np.concatenate([video.ramp_frames_nhwc_u8()] * REPEATS)
    return video.write_clip(tmp_path_factory.mktemp("long") / "long.mp4", frames)


def metrics(server) -> str:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def pending_requests(server, model: str) -> float:
    """``nv_inference_pending_request_count`` of ``model`` (requests queued or running)."""
    pattern = rf'^nv_inference_pending_request_count\{{model="{model}",version="\d+"\}} (\S+)$'
    found = re.search(pattern, metrics(server), flags=re.MULTILINE)
    assert found is not None, f"no pending-request metric for {model}"
    return float(found[1])


def frames_blurred(server) -> float:
    """All frames the blur stages have counted (``bgblur_frames_total``, summed)."""
    pattern = r"^bgblur_frames_total\{[^}]*\} (\S+)$"
    return sum(float(m[1]) for m in re.finditer(pattern, metrics(server), flags=re.MULTILINE))


def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def cli(*args: object) -> subprocess.Popen:
    """``python -m bgblur_client ...`` as a child process that takes a real Ctrl-C."""
    return subprocess.Popen(
        [sys.executable, "-m", "bgblur_client", *(str(a) for a in args), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # CI shells may start jobs with SIGINT ignored; the CLI must see a real Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_output(process: subprocess.Popen, out: Path, timeout_s: float = 60) -> None:
    """Until ``out``'s partial file (written beside it, renamed to ``out`` at the end:
    bgblur_client.files) has bytes (the muxer flushed its first 32 KiB: frames were written)."""

    def started() -> bool:
        for path in out.parent.glob(f".{out.stem}.*.partial.*"):
            with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                if path.stat().st_size > 0:
                    return True
        return False

    written = wait_until(lambda: process.poll() is not None or started(), timeout_s, step_s=0.05)
    if process.poll() is not None:
        _, err = process.communicate()
        pytest.fail(f"the CLI ended (exit {process.returncode}) before it was stopped: {err}")
    assert written, f"no output after {timeout_s} s"


def assert_idle_and_serving(server, video, ramp_clip_bytes: bytes, blurred_at_stop: float) -> None:
    """The stopped video's work ended within a batch or two and both paths still serve.

    The model exposes no session list; what shows a session living on is the blur stages'
    frame counter, which must settle at once (a few in-flight frames after the stop) instead
    of counting the rest of the clip, and no request may be left pending.
    """

    def settled() -> bool:
        counted = frames_blurred(server)
        time.sleep(0.5)
        return frames_blurred(server) == counted

    assert wait_until(settled, 3, step_s=0), "frames are still being blurred: a session lives on"
    # <= 2 batches of 2 frames in flight (x 3 stages that count); the clip had > 200 frames left
    assert frames_blurred(server) - blurred_at_stop <= 3 * 2 * 2 * 2
    assert pending_requests(server, VIDEO_MODEL) == 0
    assert server.is_ready()
    with BlurClient(server.grpc_url) as client:
        one = video.ramp_frames_nhwc_u8(64, 48, 1)
        assert client.blur(one).blurred_nhwc_u8.shape == one.shape
    out, done, error = video.stream_video(server.grpc_url, ramp_clip_bytes, {"batch_size": 8})
    assert error is None and done[-1] == RAMP and out
    assert pending_requests(server, VIDEO_MODEL) == 0


def assert_playable_prefix_in_order(out: Path, long_clip: Path, video) -> int:
    """``out`` decodes to 0 < n < FRAMES frames that are the input's first n, in order.

    Order: within each ramp the brightness rises frame after frame (the blur keeps the mean
    within ~1 level; the ramp's top steps are too small for nearest-frame matching), and every
    frame's mean is close to its input frame's.
    """
    frames_out, props = video.decode_rgb(out)
    count = props["frames"]
    assert 0 < count < FRAMES
    frames_in, _ = video.decode_rgb(long_clip)
    mean_out = frames_out.reshape(count, -1).mean(axis=1)
    mean_in = frames_in[:count].reshape(count, -1).mean(axis=1)
    assert np.abs(mean_out - mean_in).max() < 2.0
    for start in range(0, count, RAMP):
        assert (np.diff(mean_out[start : start + RAMP]) > 0).all(), start
    return count


def test_ctrl_c_in_a_client_side_run_leaves_a_playable_prefix_in_order(
    triton_server, long_clip: Path, tmp_path: Path, video, ramp_clip_bytes: bytes
) -> None:
    out = tmp_path / "partial.mp4"
    process = cli(
        *("video", long_clip, out, "--url", triton_server.grpc_url),
        *("--decoder", "pyav", "--batch", "2", "--in-flight", "2"),
    )
    wait_for_output(process, out)

    blurred_at_stop = frames_blurred(triton_server)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)

    assert process.returncode == EXIT_INTERRUPTED, err
    assert err.rstrip().endswith("bgblur: interrupted"), err
    assert "Traceback" not in err
    written = re.search(r"interrupted after (\d+) frames", err)
    assert written is not None, err
    count = assert_playable_prefix_in_order(out, long_clip, video)
    assert count == int(written[1])
    with av.open(str(out)) as container:  # audio kept up to the interrupt
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
    assert_idle_and_serving(triton_server, video, ramp_clip_bytes, blurred_at_stop)


def _start_stream(url: str, data: bytes) -> tuple[grpcclient.InferenceServerClient, queue.Queue]:
    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    video_input = grpcclient.InferInput("VIDEO", [len(data)], "UINT8")
    video_input.set_data_from_numpy(np.frombuffer(data, np.uint8))
    # small batches and chunks: the first chunk comes after a few frames
    client.async_stream_infer(
        VIDEO_MODEL,
        [video_input],
        parameters={"batch_size": 2, "chunk_bytes": 4096},
        enable_empty_final_response=True,
    )
    return client, answers


def test_cancelled_server_side_stream_stops_its_session(
    triton_server, long_clip: Path, video, ramp_clip_bytes: bytes
) -> None:
    client, answers = _start_stream(triton_server.grpc_url, long_clip.read_bytes())
    try:
        result, error = answers.get(timeout=60)
        assert error is None, error
        frames_done = int(result.as_numpy("FRAMES_DONE")[0])
        assert 0 < frames_done < FRAMES
        # The session is running (a decoupled request is not 'pending' once execute returned:
        # the blur stages' frame counter is what shows it).
        blurred = frames_blurred(triton_server)
        assert wait_until(lambda: frames_blurred(triton_server) > blurred, 10)

        blurred_at_stop = frames_blurred(triton_server)
        client.stop_stream(cancel_requests=True)
    finally:
        client.close()

    assert_idle_and_serving(triton_server, video, ramp_clip_bytes, blurred_at_stop)


def test_ctrl_c_and_kill_of_a_server_side_run_stop_its_session(
    triton_server, long_clip: Path, tmp_path: Path, video, ramp_clip_bytes: bytes
) -> None:
    """Ctrl-C cancels the request and keeps a playable prefix; a killed client (no cancel,
    the connection just drops) leaves no session behind either."""
    for stop in (signal.SIGINT, signal.SIGKILL):
        out = tmp_path / f"partial-{stop.name}.mp4"
        process = cli(
            *("video", long_clip, out, "--url", triton_server.grpc_url, "--server-side"),
            *("--batch", "2", "--param", "chunk_bytes=4096"),
        )
        wait_for_output(process, out)

        blurred_at_stop = frames_blurred(triton_server)
        process.send_signal(stop)
        _, err = process.communicate(timeout=60)

        if stop == signal.SIGINT:
            assert process.returncode == EXIT_INTERRUPTED, err
            assert "Traceback" not in err
            assert_playable_prefix_in_order(out, long_clip, video)
        else:
            assert process.returncode == -signal.SIGKILL
        assert_idle_and_serving(triton_server, video, ramp_clip_bytes, blurred_at_stop)
