"""The codec bindings' CUDA context (bgblur.video.cuda_context), on a GPU.

On the H200 (2026-12-02) the NVENC probe of a video session (PyNvVideoCodec, no NVENC there) left
a context of the binding's own current on the session's thread: the in-process blur's first
event record then failed with cudaErrorInvalidResourceHandle, and BLS round trips returned frames
out of order. These tests hold the thread's context to the device's primary context.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest

from bgblur.device import Device
from bgblur.stages.stream import StageStream

pytestmark = pytest.mark.gpu

HAS_PYNVVIDEOCODEC = importlib.util.find_spec("PyNvVideoCodec") is not None


def on_a_fresh_thread(work: Callable[[], Any]) -> Any:
    """``work()`` on a new thread (a video session's), its result or its exception here."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_the_primary_context_is_the_one_cupy_works_in(cupy) -> None:
    from bgblur.video.cuda_context import current_context, primary_context

    def work() -> tuple[int, int]:
        cupy.cuda.runtime.free(0)  # the runtime binds the primary context to this thread
        return current_context(), primary_context(0)

    current, primary = on_a_fresh_thread(work)
    assert primary != 0 and current == primary


def test_a_context_pushed_inside_the_guard_is_taken_off_again(cupy) -> None:
    from bgblur.video.cuda_context import _libcuda, current_context, thread_context_kept

    lib = _libcuda()

    def work() -> tuple[int, int, int]:
        cupy.cuda.runtime.free(0)
        before = current_context()
        foreign = ctypes.c_void_p()
        with thread_context_kept("the test"):
            assert lib.cuCtxCreate_v2(ctypes.byref(foreign), 0, 0) == 0  # pushed, current
            inside = current_context()
        after = current_context()
        lib.cuCtxDestroy_v2(foreign)
        return before, inside, after

    before, inside, after = on_a_fresh_thread(work)
    assert inside not in (0, before)
    assert after == before


@pytest.mark.skipif(not HAS_PYNVVIDEOCODEC, reason="needs PyNvVideoCodec")
def test_the_nvenc_probe_leaves_a_stage_stream_usable_on_its_thread(cupy) -> None:
    from bgblur.video import encoders
    from bgblur.video.cuda_context import current_context, primary_context

    def work() -> tuple[str | None, int, float]:
        stage_stream = StageStream(Device("gpu", 0))
        encoders._NVENC_PROBES.pop(0, None)
        reason = encoders.nvenc_unavailable_reason(width=1920, height=1080, rate=Fraction(30))
        with stage_stream.activate():  # records an event on the caller's (null) stream
            total = float(cupy.arange(1000, dtype=cupy.float32).sum())
        stage_stream.synchronize()
        return reason, current_context(), total

    try:
        reason, context, total = on_a_fresh_thread(work)
    finally:
        encoders._NVENC_PROBES.clear()
    assert context == primary_context(0), f"probe result: {reason}"
    assert total == 499500.0
