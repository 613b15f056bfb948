"""CUDA MPS (Multi-Process Service) for the server: one MPS server runs the CUDA work of
tritonserver, its Python stubs (a process per model instance, each its own CUDA context) and
any client process on the same host, so their kernels share the SMs at once instead of the GPU
time-slicing between the contexts.

``MpsDaemon.attach_or_start`` either

- attaches to a control daemon that already runs: ``$CUDA_MPS_PIPE_DIRECTORY`` names a folder
  with the daemon's ``control`` pipe in it (started by the host, a container entrypoint, or a
  benchmark before its own CUDA work); it is used and left running; or
- starts one of its own: ``nvidia-cuda-mps-control -f`` (foreground: a child process of this
  one, in its own session) with private pipe and log folders under the server's work folder,
  owned by the account the server runs as; it is stopped (``quit`` on its control pipe, then
  SIGTERM/SIGKILL of the process it started) by ``stop()``.

The daemon serves the GPUs visible to this process. The processes that are to share it get
``client_environment()``: the pipe and log folders and, where ``$CUDA_VISIBLE_DEVICES`` names GPUs
by index, the same GPUs by UUID (MPS renumbers the devices it serves: an index list set for both
the daemon and its clients names other devices or none; UUIDs mean the same GPUs to both, as
NVIDIA's MPS documentation recommends).

MPS runs one user's processes at a time: the processes of a second user wait until the first
user's have all ended. Client and server must run as one account (``TritonServer(user=None)``,
``bgblur-server --user ''``) for a client's CUDA work to share the GPU with the server's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

LOG = logging.getLogger("bgblur.server.mps")

MPS_CONTROL = "nvidia-cuda-mps-control"
PIPE_DIRECTORY_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_DIRECTORY_ENV = "CUDA_MPS_LOG_DIRECTORY"
VISIBLE_DEVICES_ENV = "CUDA_VISIBLE_DEVICES"
CONTROL_PIPE = "control"
"""The daemon's control pipe in its pipe folder: present while it runs."""
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class MpsError(RuntimeError):
    """MPS cannot be used as asked (no control program, a daemon that did not start)."""


@dataclass(frozen=True)
class MpsDirectories:
    """The folders of one MPS control daemon: ``pipe`` (its control pipe and the servers'
    sockets; shared by every client) and ``log`` (``control.log``, ``server.log``)."""

    pipe: Path
    log: Path

    @property
    def control_pipe(self) -> Path:
        return self.pipe / CONTROL_PIPE

    def environment(self) -> dict[str, str]:
        """``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY`` for these folders."""
        return {PIPE_DIRECTORY_ENV: str(self.pipe), LOG_DIRECTORY_ENV: str(self.log)}


def running_daemon(environ: Mapping[str, str] | None = None) -> MpsDirectories | None:
    """The daemon ``$CUDA_MPS_PIPE_DIRECTORY`` names, when its control pipe is there; None
    when the variable is unset or empty, or no daemon's pipe is in that folder. The log folder
    is ``$CUDA_MPS_LOG_DIRECTORY`` (MPS's default ``/var/log/nvidia-mps`` when unset)."""
    environ = os.environ if environ is None else environ
    pipe = environ.get(PIPE_DIRECTORY_ENV, "").strip()
    if not pipe:
        return None
    directories = MpsDirectories(
        Path(pipe), Path(environ.get(LOG_DIRECTORY_ENV, "").strip() or "/var/log/nvidia-mps")
    )
    return directories if directories.control_pipe.exists() else None


def find_mps_control(explicit: str | None = None, path: str | None = None) -> str:
    """The ``nvidia-cuda-mps-control`` executable (``explicit``, else on ``path``/PATH).

    Raises:
        MpsError: it is not there, with what to do instead.
    """
    name = explicit or MPS_CONTROL
    found = shutil.which(name, path=path)
    if found is None:
        raise MpsError(
            f"--mps: {name} not found on PATH: it comes with the NVIDIA driver's utilities "
            "(nvidia-utils; in a container, the NVIDIA Container Toolkit mounts it with the "
            "'compute' capability). Or start a daemon yourself and set "
            f"{PIPE_DIRECTORY_ENV} to its pipe folder: the server then uses it"
        )
    return found


def daemon_command(executable: str) -> list[str]:
    """The argv of a control daemon that stays in the foreground (a child we can stop)."""
    return [executable, "-f"]


def quit_command(executable: str) -> tuple[list[str], str]:
    """``(argv, stdin)`` that asks the daemon of the environment's pipe folder to quit (it stops
    its MPS servers after their clients exit)."""
    return [executable], "quit\n"


_UUID = re.compile(r"^(GPU|MIG)-", re.IGNORECASE)


def visible_devices_as_uuids(value: str, index_to_uuid: Mapping[int, str]) -> str:
    """``$CUDA_VISIBLE_DEVICES`` with each index replaced by its GPU's UUID (entries that are
    UUIDs already stay; ``index_to_uuid``: nvidia-smi's ``index`` -> ``uuid``).

    Raises:
        MpsError: an entry that is neither a UUID nor a known index.
    """
    entries = [e.strip() for e in value.split(",") if e.strip()]
    out = []
    for entry in entries:
        if _UUID.match(entry):
            out.append(entry)
        elif entry.isdigit() and int(entry) in index_to_uuid:
            out.append(index_to_uuid[int(entry)])
        else:
            raise MpsError(
                f"--mps: {VISIBLE_DEVICES_ENV}={value!r}: {entry!r} is neither a GPU UUID nor "
                f"the index of a GPU nvidia-smi lists ({sorted(index_to_uuid)})"
            )
    return ",".join(out)


def gpu_uuids(nvidia_smi: str = "nvidia-smi") -> dict[int, str]:
    """nvidia-smi's GPU index -> UUID (empty when nvidia-smi is absent or lists none)."""
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return {}
    proc = subprocess.run(
        [exe, "--query-gpu=index,uuid", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = {}
    for line in proc.stdout.splitlines():
        index, _, uuid = line.partition(",")
        if index.strip().isdigit() and uuid.strip():
            found[int(index)] = uuid.strip()
    return found


def client_environment(
    directories: MpsDirectories,
    environ: Mapping[str, str] | None = None,
    index_to_uuid: Mapping[int, str] | None = None,
) -> dict[str, str]:
    """The variables a process needs to be a client of the daemon in ``directories``: its
    folders and, when ``environ`` has ``CUDA_VISIBLE_DEVICES`` with indices, the same list by
    UUID (``index_to_uuid``, default: nvidia-smi's)."""
    environ = os.environ if environ is None else environ
    env = directories.environment()
    visible = environ.get(VISIBLE_DEVICES_ENV)
    if visible is not None and visible.strip():
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if not all(_UUID.match(e) for e in entries):
            table = gpu_uuids() if index_to_uuid is None else index_to_uuid
            env[VISIBLE_DEVICES_ENV] = visible_devices_as_uuids(visible, table)
    return env


class MpsDaemon:
    """An MPS control daemon the server's processes are clients of (see the module docstring).

    Use ``attach_or_start``; ``owned`` says whether this object started it (and ``stop()``
    stops it) or attached to one that was running.
    """

    def __init__(
        self,
        directories: MpsDirectories,
        *,
        executable: str | None,
        owned: bool,
        environment: Mapping[str, str],
    ) -> None:
        self.directories = directories
        self.executable = executable
        self.owned = owned
        self._environment = dict(environment)
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def attach_or_start(
        cls,
        root: Path,
        *,
        executable: str | None = None,
        environ: Mapping[str, str] | None = None,
        owner: tuple[int, int] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        index_to_uuid: Mapping[int, str] | None = None,
    ) -> MpsDaemon:
        """The daemon ``$CUDA_MPS_PIPE_DIRECTORY`` names if it runs, else a new one whose pipe
        and log folders are ``root/pipe`` and ``root/log`` (created; owned by ``owner``,
        ``(uid, gid)``, when given: the account the server runs as must reach the pipe and
        write the MPS server's log).

        Raises:
            MpsError: no daemon runs and ``nvidia-cuda-mps-control`` is not there, or the one
                started did not open its control pipe within ``start_timeout_s``.
        """
        environ = dict(os.environ if environ is None else environ)
        running = running_daemon(environ)
        if running is not None:
            LOG.info("CUDA MPS: using the running daemon of %s", running.pipe)
            env = client_environment(running, environ, index_to_uuid)
            return cls(running, executable=None, owned=False, environment=env)
        exe = find_mps_control(executable, path=environ.get("PATH"))
        directories = MpsDirectories(Path(root) / "pipe", Path(root) / "log")
        for folder in (Path(root), directories.pipe, directories.log):
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            if owner is not None:
                os.chown(folder, *owner)
        env = client_environment(directories, environ, index_to_uuid)
        daemon = cls(directories, executable=exe, owned=True, environment=env)
        daemon._start(environ, start_timeout_s)
        return daemon

    def client_environment(self) -> dict[str, str]:
        """Variables for a process that is to be a client of this daemon."""
        return dict(self._environment)

    def daemon_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The daemon's own environment: ``environ`` with the client variables over it."""
        return {**environ, **self._environment}

    @property
    def pid(self) -> int | None:
        """The process id of the daemon this object started (None: attached, or stopped)."""
        return None if self._process is None else self._process.pid

    def _start(self, environ: Mapping[str, str], timeout_s: float) -> None:
        assert self.executable is not None
        log = (self.directories.log / "daemon-console.log").open("ab")
        try:
            self._process = subprocess.Popen(
                daemon_command(self.executable),
                env=self.daemon_environment(environ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C goes to us; we stop it
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.directories.control_pipe.exists():
                LOG.info(
                    "CUDA MPS: control daemon started (pid %d, pipes in %s)",
                    self._process.pid,
                    self.directories.pipe,
                )
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        code = self._process.poll()
        self._kill()
        tail = self._log_tail()
        state = f"exited with code {code}" if code is not None else f"not ready in {timeout_s} s"
        raise MpsError(
            f"--mps: {self.executable} {state} (no {self.directories.control_pipe}); "
            f"its log:\n{tail}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        texts = []
        for path in sorted(self.directories.log.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            texts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(texts) or "(empty)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Stop the daemon this object started: ``quit`` (it waits for its clients to end),
        after ``timeout_s`` SIGTERM, then SIGKILL, of its process group (the MPS servers it
        started with it); an attached one keeps running. Returns the daemon's exit code (None:
        attached)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None and self.executable is not None:
            argv, stdin = quit_command(self.executable)
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    argv,
                    input=stdin.encode(),
                    env=self.daemon_environment(os.environ),
                    capture_output=True,
                    timeout=STOP_TIMEOUT_S,
                    check=False,
                )
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._kill(signal.SIGTERM)
        self._kill()
        self._process = None
        LOG.info("CUDA MPS: control daemon stopped (exit code %s)", process.returncode)
        return process.returncode

    def _kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal the daemon's process group (its own session: only what we started)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> MpsDaemon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def describe(daemon: MpsDaemon | None) -> str:
    """One line for logs and reports: off, attached to a pipe folder, or started (pid)."""
    if daemon is None:
        return "off"
    if not daemon.owned:
        return f"attached to {daemon.directories.pipe}"
    return f"started (pid {daemon.pid}, pipes in {daemon.directories.pipe})"


__all__ = [
    "MPS_CONTROL",
    "MpsDaemon",
    "MpsDirectories",
    "MpsError",
    "client_environment",
    "daemon_command",
    "find_mps_control",
    "quit_command",
    "running_daemon",
    "visible_devices_as_uuids",
]
