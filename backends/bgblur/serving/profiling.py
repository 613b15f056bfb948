"""Where a stage's time goes inside its Triton model process: cProfile around ``execute``.

Off unless ``BGBLUR_PROFILE_DIR`` names a folder in the server's environment (the launcher hands
its environment on to the model processes: ``BGBLUR_PROFILE_DIR=out/prof make serve``, or
``bench/e2e.py --profile-dir``). Each model instance (one process) then profiles every batch of
requests it executes and writes, every ``BGBLUR_PROFILE_INTERVAL_S`` seconds (default 10; 0:
after every call) and when the model is unloaded:

- ``<dir>/<stage>.<pid>.pstats``: the cProfile statistics (``python -m pstats``, snakeviz);
- ``<dir>/<stage>.<pid>.txt``: calls, requests and wall time inside ``execute``, then the
  functions by cumulative time.

The models' ``finalize`` (model unload, server stop) calls ``write_all``: the stub's interpreter
does not run ``atexit`` handlers when it is stopped.

Triton's statistics give a model's ``compute_infer`` per execution (everything from handing the
requests to the stub to getting the responses back); the wall time here is the part spent in the
project's own code. The difference is the Python backend's own cost (IPC, tensor handles). With
the profiler on, Python-heavy code runs slower (cProfile hooks every call): use it to see the
split, not to measure throughput.

Python 3.12: its cProfile (rebuilt on ``sys.monitoring``), enabled and disabled around each
``execute`` in a Triton stub, can record only part of each call tree (frames such as
``_execute_grouped`` or a stage's ``_run`` missing while their callees are there).
The counts and wall time in the ``.txt`` are this module's own and hold; read the per-function
tables from 3.12 stubs with that in mind (3.11 and earlier record the whole tree).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import logging
import os
import pstats
import time
from collections.abc import Iterator
from pathlib import Path

LOG = logging.getLogger("bgblur.serving.profiling")

PROFILE_DIR_ENV = "BGBLUR_PROFILE_DIR"
PROFILE_INTERVAL_ENV = "BGBLUR_PROFILE_INTERVAL_S"


class ExecuteProfiler:
    """cProfile over the ``execute`` calls of one model instance, written to ``out_dir``.

    Args:
        out_dir: folder for ``<name>.<pid>.pstats`` and ``<name>.<pid>.txt`` (created).
        name: the stage or model name the files are named after.
        interval_s: least seconds between two writes (0: write after every call).
    """

    def __init__(self, out_dir: Path, name: str, interval_s: float = 10.0) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stem = f"{name}.{os.getpid()}"
        self.interval_s = interval_s
        self.calls = 0
        self.requests = 0
        self.seconds = 0.0
        self._profile = cProfile.Profile()
        self._last_write = time.monotonic()

    @classmethod
    def from_env(cls, name: str) -> ExecuteProfiler | None:
        """The profiler that ``$BGBLUR_PROFILE_DIR`` asks for, else None."""
        out_dir = os.environ.get(PROFILE_DIR_ENV)
        if not out_dir:
            return None
        interval_s = float(os.environ.get(PROFILE_INTERVAL_ENV, "10"))
        profiler = cls(Path(out_dir), name, interval_s)
        LOG.warning("profiling %s into %s (slower while on)", name, out_dir)
        return profiler

    @contextlib.contextmanager
    def execute(self, requests: int) -> Iterator[None]:
        """Profile one ``execute`` call answering ``requests`` requests."""
        started = time.perf_counter()
        self._profile.enable()
        try:
            yield
        finally:
            self._profile.disable()
            self.seconds += time.perf_counter() - started
            self.calls += 1
            self.requests += requests
            if time.monotonic() - self._last_write >= self.interval_s:
                self.write()

    def summary(self, top: int = 40) -> str:
        """Calls, requests, wall time per call, then the ``top`` functions by cumulative time."""
        per_call_us = self.seconds / self.calls * 1e6 if self.calls else 0.0
        text = io.StringIO()
        text.write(
            f"{self.calls} execute calls, {self.requests} requests, "
            f"{self.seconds:.3f} s inside execute ({per_call_us:.1f} us per call)\n\n"
        )
        if self.calls:
            stats = pstats.Stats(self._profile, stream=text)
            stats.sort_stats("cumulative").print_stats(top)
        return text.getvalue()

    def write(self) -> None:
        """Write the ``.pstats`` and ``.txt`` files (each replaced atomically); never raises."""
        self._last_write = time.monotonic()
        try:
            for suffix, write in (
                (".pstats", lambda path: self._profile.dump_stats(str(path))),
                (".txt", lambda path: path.write_text(self.summary())),
            ):
                final = self.out_dir / f"{self.stem}{suffix}"
                partial = final.with_name(final.name + ".partial")
                write(partial)
                partial.replace(final)
        except Exception:  # a diagnostic must not fail serving
            LOG.warning("could not write the profile of %s", self.stem, exc_info=True)


_PROFILERS: dict[str, ExecuteProfiler | None] = {}


def execute_profile(name: str, requests: int) -> contextlib.AbstractContextManager[None]:
    """A context that profiles one ``execute`` of ``name`` when ``$BGBLUR_PROFILE_DIR`` is set
    (``ExecuteProfiler``), else does nothing."""
    if name not in _PROFILERS:
        _PROFILERS[name] = ExecuteProfiler.from_env(name)
    profiler = _PROFILERS[name]
    return profiler.execute(requests) if profiler is not None else contextlib.nullcontext()


def write_all() -> None:
    """Write every profile this process holds (a model's ``finalize``); nothing when off."""
    for profiler in _PROFILERS.values():
        if profiler is not None:
            profiler.write()
