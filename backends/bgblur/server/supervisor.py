"""The supervisor of the embedded Triton server: one loop that owns its lifecycle. It starts the
server, watches it (the process, every Python stub, and a real inference answered within a
deadline) and restarts it with backoff after any crash or hang, start-up included; it never
gives up while it runs, and readiness tells the truth meanwhile.

Triton 2.51 does not restart a Python-backend stub that died (``kill -9``, an out-of-memory
kill, a segfault in a native library): every request through that model then fails with "Stub
process '<model>_0_0' is not healthy" while ``/v2/health/ready`` still answers 200. Reloading
the model through the repository API does not heal it either: the new instance serves, but the
old one never finishes unloading (its stub cannot answer), so the server then hangs on exit and
leaks the dead stub's ``/dev/shm`` region. So the supervisor restarts the whole server: SIGKILL
to its process group (the ensemble is broken anyway: every request crosses every stage), remove
the Python backend's shared-memory regions of the killed processes, start again on the same
ports, wait for readiness. Clients see the connection refused meanwhile (readiness false), never
a hang.

A server can also hang alive: every process present, ``/v2/health/ready`` 200, and no inference
answered (a stopped process, a deadlocked stub). Process checks cannot see that, so the
supervisor sends a tiny frame through the entry model every ``probe_interval_s``; no answer
within ``probe_timeout_s`` (or an error other than overload, such as the Python backend's
"Stub process is not healthy" for a stopped stub) makes readiness false at once, and
``probe_failures`` in a row restart the server. A probe refused by a full queue counts as alive.

This module reads ``/proc`` (Linux) and needs no third-party package.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

LOG = logging.getLogger("bgblur.server.supervisor")

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
    (other users, other test runs) keep theirs.
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

    def launch(self, reason: str) -> None:
        """Kill whatever runs of the server, clean its shared memory, start it (no wait)."""

    def triton_ready(self) -> bool:
        """Triton's own strict readiness."""

    def probe(self, timeout_s: float) -> bool:
        """True when a tiny inference was served (or refused for overload) in ``timeout_s``."""


class ServerState(enum.Enum):
    """Where the server's lifecycle stands."""

    STOPPED = "stopped"
    STARTING = "starting"
    SERVING = "serving"
    RECOVERING = "recovering"


@dataclass
class RecoveryEvent:
    """One detected failure and its recovery.

    Attributes:
        reason: what was detected (which stub or the server, and how).
        detected_at: ``time.monotonic()`` of the detection.
        recovered_s: seconds from detection to a ready server again (None: not yet).
        error: why the latest attempt failed, when one did.
        attempts: start attempts made for this recovery.
    """

    reason: str
    detected_at: float
    recovered_s: float | None = None
    error: str | None = None
    attempts: int = 0


@dataclass
class Supervisor:
    """Owns a server's lifecycle: start, watch, restart with backoff, never give up.

    Args:
        server: the launcher's server (``launch``, ``server_pid``, ``triton_ready``, ``probe``).
        interval_s: how often ``/proc`` is read (the detection delay of a death).
        startup_timeout_s: one start attempt's limit: past it the attempt counts as failed and
            the server is started again.
        probe_interval_s, probe_timeout_s, probe_failures: the hang check (module docstring);
            ``probe_interval_s=0`` turns it off.
        backoff_initial_s, backoff_max_s: the delay before a restart doubles from the first
            to the second with each failure that follows another within ``stable_s``.
        stable_s: serving this long resets the backoff.
    """

    server: SupervisedServer
    interval_s: float = 0.25
    startup_timeout_s: float = 180.0
    probe_interval_s: float = 5.0
    probe_timeout_s: float = 10.0
    probe_failures: int = 2
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    stable_s: float = 60.0
    events: list[RecoveryEvent] = field(default_factory=list)
    failures: int = 0  # every death, hang and failed start attempt seen
    state: ServerState = ServerState.STOPPED
    _stubs: dict[int, StubProcess] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _serving: threading.Event = field(default_factory=threading.Event)
    _probe_ok: bool = True
    _thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """Serving, and the latest probe (if any) answered in time."""
        return self.state is ServerState.SERVING and self._probe_ok

    @property
    def recovering(self) -> bool:
        """A failure was detected and the server is not serving again yet."""
        return self.state in (ServerState.STARTING, ServerState.RECOVERING) and bool(self.events)

    def start(self) -> None:
        """Start the server from the supervisor's thread (``wait_serving`` waits for it)."""
        self._stop.clear()
        self._serving.clear()
        self.state = ServerState.STARTING
        self._thread = threading.Thread(target=self._run, name="bgblur-supervisor", daemon=True)
        self._thread.start()

    def wait_serving(self, timeout_s: float) -> bool:
        """Wait until the server serves (True) or ``timeout_s`` passes (False)."""
        return self._serving.wait(timeout_s)

    def signal_stop(self) -> None:
        """Tell the loop to leave without waiting for it (a probe in progress may take up to
        ``probe_timeout_s``; the loop acts on nothing after it)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop supervising (before a deliberate shutdown); waits for the loop to leave."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self.state = ServerState.STOPPED

    def _run(self) -> None:
        event: RecoveryEvent | None = None
        reason = "start"
        failures = 0
        while not self._stop.is_set():
            if event is not None:
                event.attempts += 1
            failure = self._start_once(reason)
            if failure is None:
                if event is not None:
                    event.recovered_s = time.monotonic() - event.detected_at
                    LOG.warning("bgblur supervisor: ready again after %.1f s", event.recovered_s)
                served_from = time.monotonic()
                failure = self._watch()
                if failure is None:  # stopped
                    return
                if time.monotonic() - served_from >= self.stable_s:
                    failures = 0
                event = RecoveryEvent(reason=failure, detected_at=time.monotonic())
                self.events.append(event)
                LOG.warning("bgblur supervisor: %s; restarting tritonserver", failure)
            elif self._stop.is_set():
                return
            else:
                if event is None:  # the first start failed: a failure like any other
                    event = RecoveryEvent(reason=failure, detected_at=time.monotonic())
                    self.events.append(event)
                event.error = failure
                LOG.error("bgblur supervisor: %s", failure)
            self.failures += 1
            self.state = ServerState.RECOVERING
            self._serving.clear()
            delay = min(self.backoff_max_s, self.backoff_initial_s * 2**failures)
            failures += 1
            reason = failure
            self._stop.wait(delay)

    def _start_once(self, reason: str) -> str | None:
        """One start attempt; None when the server serves, else why it did not."""
        self.state = ServerState.STARTING if not self.events else ServerState.RECOVERING
        try:
            self.server.launch(reason)
        except Exception as exc:
            return f"start failed: {type(exc).__name__}: {exc}"
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._stop.is_set():
            pid = self.server.server_pid()
            if pid is None or not process_alive(pid):
                return "tritonserver exited during start-up"
            if self.server.triton_ready():
                break
            if time.monotonic() > deadline:
                return f"tritonserver not ready after {self.startup_timeout_s:.0f} s"
            self._stop.wait(self.interval_s)
        else:
            return "stopped"
        self._stubs = {s.pid: s for s in stub_processes(pid)}
        self._probe_ok = True
        self.state = ServerState.SERVING
        self._serving.set()
        return None

    def check(self) -> str | None:
        """One look at the processes: the reason for a restart, or None when all live."""
        pid = self.server.server_pid()
        if pid is None or not process_alive(pid):
            return "tritonserver exited"
        current = {s.pid: s for s in stub_processes(pid)}
        for stub_pid, stub in self._stubs.items():
            if stub_pid not in current:
                return f"Python stub of model {stub.model!r} ({stub.instance}, pid {stub_pid}) died"
        self._stubs.update(current)  # stubs of a model loaded later join the watched set
        return None

    def _watch(self) -> str | None:
        """Watch a serving server until it needs a restart (the reason) or we stop (None)."""
        next_probe = time.monotonic() + self.probe_interval_s
        missed = 0
        while not self._stop.wait(self.interval_s):
            reason = self.check()
            if reason is not None:
                self._serving.clear()
                return reason
            if self.probe_interval_s <= 0 or time.monotonic() < next_probe:
                continue
            answered = self.server.probe(self.probe_timeout_s)
            next_probe = time.monotonic() + self.probe_interval_s
            if answered:
                missed, self._probe_ok = 0, True
                continue
            if self._stop.is_set():
                return None
            if self.check() is not None:  # died while probed: report the death
                continue
            missed += 1
            self._probe_ok = False
            if missed >= self.probe_failures:
                self._serving.clear()
                return (
                    f"tritonserver hung: no inference served within "
                    f"{self.probe_timeout_s:g} s, {missed} times in a row"
                )
        return None
