"""The one CUDA stream a GPU stage instance runs on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from bgblur.device import Device


class StageStream:
    """Device context + CuPy stream of a stage; ``with stage_stream:`` makes both current.

    On the CPU it is a no-op context. ``synchronize()`` is the hand-off point: the only host
    synchronisation a stage performs.

    Entering orders the stage's stream after the work the caller has queued on its own current
    stream (an event, no host wait): inputs the caller produced there, e.g. the asynchronous
    host-to-device copy of ``cupy.asarray(numpy_frames)`` on the legacy default stream, are
    complete before the stage's kernels read them. The stage's stream is non-blocking, so
    without this nothing would order the two (under load a stage then reads stale input).
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self._stream: Any = None
        self._caller_done: Any = None
        if device.is_gpu:
            import cupy

            with cupy.cuda.Device(device.index):
                self._stream = cupy.cuda.Stream(non_blocking=True)
                self._caller_done = cupy.cuda.Event(block=False, disable_timing=True)

    @property
    def cuda_stream(self) -> Any:
        """The stage's ``cupy.cuda.Stream`` (None on the CPU)."""
        return self._stream

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        if self._stream is None:
            yield
            return
        import cupy

        with cupy.cuda.Device(self.device.index):
            caller = cupy.cuda.get_current_stream()
            if caller.ptr != self._stream.ptr:
                self._caller_done.record(caller)
                self._stream.wait_event(self._caller_done)
            with self._stream:
                yield

    def to_device(self, array: Any) -> Any:
        """``array`` (NumPy or CuPy) on this stage's device; call inside ``activate()``."""
        if self._stream is None:
            if not isinstance(array, __import__("numpy").ndarray):
                raise TypeError(f"a CPU stage got a {type(array).__name__}")
            return array
        import cupy

        return cupy.asarray(array)

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
