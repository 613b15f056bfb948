"""The supervisor of the embedded Triton server: it notices a dead Python stub or a dead server
within a second and restarts the server, so that readiness tells the truth.

Triton 2.51 does not restart a Python-backend stub that died (``kill -9``, an out-of-memory
kill, a segfault in a native library): every request through that model then fails with "Stub
process '<model>_0_0' is not healthy" while ``/v2/health/ready`` still answers 200. Reloading
the model through the repository API does not heal it either: the new instance serves, but the
old one never finishes unloading (its stub cannot answer), so the server then hangs on exit and
leaks the dead stub's ``/dev/shm`` region (measured on 2.51, 2026-11-25). So the supervisor
restarts the whole server: SIGKILL to its process group (the ensemble is broken anyway: every
request crosses every stage), remove the Python backend's shared-memory regions of the killed
processes, start again on the same ports, wait for readiness. Clients see the connection refused
meanwhile (readiness false), never a hang.

This module reads ``/proc`` (Linux) and needs no third-party package.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

LOG = logging.getLogger("bgblur.supervisor")

STUB_EXECUTABLE = "triton_python_backend_stub"
SHM_REGION_PREFIX = "triton_python_backend_shm_region_"
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class StubProcess:
    """One Python-backend stub process of a Triton server (one per model instance).

    Attributes:
        pid: its process id.
        model: the model it serves (the folder above ``<version>/model.py``).
        instance: Triton's instance name, e.g. ``segmentation_0_0``.
        shm_region: the name of its shared-memory region in ``/dev/shm``.
    """

    pid: int
    model: str
    instance: str
    shm_region: str


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` fields after the command name (state first), None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (dead but not yet reaped)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                children.append(int(entry))
    return children


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The live Python-backend stubs started by the Triton server ``server_pid``."""
    stubs: list[StubProcess] = []
    for pid in child_pids(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        # argv: stub, <repo>/<model>/<version>/model.py, shm region, sizes, parent pid, backend
        # folder, ..., instance name (Triton 2.51's python_be.cc StubLauncher::Launch).
        if len(argv) < 9 or not argv[0].endswith(STUB_EXECUTABLE):
            continue
        if not process_alive(pid):
            continue
        model = Path(argv[1]).parent.parent.name
        stubs.append(StubProcess(pid=pid, model=model, instance=argv[8], shm_region=argv[2]))
    return stubs


def process_tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (bytes); 0 when it is gone."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        pending.extend(child_pids(current))
    return total


def shm_regions(prefix: str = SHM_REGION_PREFIX) -> dict[str, int]:
    """Files in ``/dev/shm`` whose name starts with ``prefix``: name -> allocated bytes."""
    regions: dict[str, int] = {}
    try:
        entries = list(os.scandir(SHM_DIR))
    except OSError:
        return regions
    for entry in entries:
        if entry.name.startswith(prefix):
            try:
                regions[entry.name] = entry.stat().st_blocks * 512
            except OSError:
                continue
    return regions


def remove_shm_regions(names: Iterable[str]) -> list[str]:
    """Unlink the given ``/dev/shm`` regions that still exist; returns the names removed.

    Only names taken from this server's own stubs are passed here: other servers on the host
    (other users, other test sessions) keep theirs.
    """
    removed: list[str] = []
    for name in names:
        if "/" in name or not name.startswith(SHM_REGION_PREFIX):
            continue
        try:
            (SHM_DIR / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


class SupervisedServer(Protocol):
    """What the supervisor needs from the launcher's ``TritonServer``."""

    def server_pid(self) -> int | None: ...

    def restart(self, reason: str) -> None: ...


@dataclass
class RecoveryEvent:
    """One detected failure and its recovery.

    Attributes:
        reason: what was detected (which stub or the server, and how).
        detected_at: ``time.monotonic()`` of the detection.
        recovered_s: seconds from detection to a ready server again (None: not recovered).
        error: why the recovery failed, when it did.
    """

    reason: str
    detected_at: float
    recovered_s: float | None = None
    error: str | None = None


@dataclass
class Supervisor:
    """Watches a server's process and its Python stubs; restarts the server when one dies.

    Args:
        server: the launcher's server (``server_pid()``, ``restart(reason)``).
        interval_s: how often ``/proc`` is read (the detection delay is at most this).
        max_restarts: restarts allowed within ``window_s``; past it the supervisor gives up and
            leaves the server down (a crash loop is not hidden behind endless restarts).
        window_s: the window of ``max_restarts``.
    """

    server: SupervisedServer
    interval_s: float = 0.5
    max_restarts: int = 5
    window_s: float = 300.0
    events: list[RecoveryEvent] = field(default_factory=list)
    known_regions: set[str] = field(default_factory=set)
    _stubs: dict[int, StubProcess] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _healthy: threading.Event = field(default_factory=threading.Event)
    gave_up: bool = False

    @property
    def healthy(self) -> bool:
        """False from a detected failure until the restarted server is ready again."""
        return self._healthy.is_set()

    @property
    def recovering(self) -> bool:
        """A failure was detected and the restart has not finished (nor been given up)."""
        return self._thread is not None and not self.gave_up and not self._healthy.is_set()

    def adopt(self) -> None:
        """Take the current server process and its stubs as the healthy state to watch."""
        pid = self.server.server_pid()
        self._stubs = {s.pid: s for s in stub_processes(pid)} if pid else {}
        self.known_regions.update(s.shm_region for s in self._stubs.values())
        self._healthy.set()

    def start(self) -> None:
        """Adopt the running server and watch it from a daemon thread."""
        self.adopt()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bgblur-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before a deliberate shutdown); waits for a restart in progress."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def check(self) -> str | None:
        """One look: the reason the server needs a restart, or None when all is well."""
        pid = self.server.server_pid()
        if pid is None or not process_alive(pid):
            return "tritonserver exited"
        current = {s.pid: s for s in stub_processes(pid)}
        for stub_pid, stub in self._stubs.items():
            if stub_pid not in current:
                return f"Python stub of model {stub.model!r} ({stub.instance}, pid {stub_pid}) died"
        # New stubs (a model loaded by the launcher) join the watched set.
        self._stubs.update(current)
        self.known_regions.update(s.shm_region for s in current.values())
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            reason = self.check()
            if reason is None:
                continue
            self._healthy.clear()
            event = RecoveryEvent(reason=reason, detected_at=time.monotonic())
            self.events.append(event)
            recent = [e for e in self.events if event.detected_at - e.detected_at < self.window_s]
            if len(recent) > self.max_restarts:
                event.error = f"more than {self.max_restarts} restarts in {self.window_s:.0f} s"
                LOG.error("bgblur supervisor: %s; giving up: %s", reason, event.error)
                self.gave_up = True
                return
            LOG.warning("bgblur supervisor: %s; restarting tritonserver", reason)
            try:
                self.server.restart(reason)
            except Exception as exc:  # the next round sees the server down and tries again
                event.error = f"{type(exc).__name__}: {exc}"
                LOG.error("bgblur supervisor: restart failed: %s", event.error)
                continue
            if self._stop.is_set():
                return
            self.adopt()
            event.recovered_s = time.monotonic() - event.detected_at
            LOG.warning("bgblur supervisor: ready again after %.1f s", event.recovered_s)
