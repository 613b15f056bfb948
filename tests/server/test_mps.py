"""CUDA MPS for the server (bgblur.server.mps, ``TritonServer(mps=True)``, ``--mps``).

No GPU and no MPS here: the control program is missing on this machine, so the refusal is
tested for real; the daemon's lifecycle runs a stand-in ``nvidia-cuda-mps-control`` (a real
process on PATH that, like the real one in ``-f`` mode, opens a ``control`` FIFO in
``$CUDA_MPS_PIPE_DIRECTORY`` and quits when a client writes ``quit`` to it), and the server's
side a stand-in ``tritonserver`` that records the environment it was started with and answers
readiness.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from bgblur.server import launcher, mps
from bgblur.server.launcher import ServerOptions, ServerStartError, TritonServer
from bgblur.server.mps import (
    LOG_DIRECTORY_ENV,
    PIPE_DIRECTORY_ENV,
    MpsDaemon,
    MpsDirectories,
    MpsError,
    client_environment,
    daemon_command,
    find_mps_control,
    quit_command,
    running_daemon,
    visible_devices_as_uuids,
)

# The stand-in control program: "-f" is the daemon (records its environment, opens the control
# FIFO, exits 0 on "quit"; STAND_IN_MODE=deaf ignores it, =broken exits 3 at once); without
# "-f" it is the client and writes its stdin into the daemon's FIFO.
STAND_IN_CONTROL = """#!{python}
import json, os, sys, time
from pathlib import Path
pipe = Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
log = Path(os.environ.get("CUDA_MPS_LOG_DIRECTORY", "/nonexistent"))
control = pipe / "control"
mode = os.environ.get("STAND_IN_MODE", "")
if sys.argv[1:] == ["-f"]:
    if mode == "broken":
        (log / "control.log").write_text("cannot open the GPU\\n")
        sys.exit(3)
    (log / "daemon-env.json").write_text(json.dumps(dict(os.environ)))
    os.mkfifo(control)
    while True:
        with open(control) as fifo:
            command = fifo.read().strip()
        if command == "quit" and mode != "deaf":
            control.unlink()
            (log / "control.log").write_text("quit received\\n")
            sys.exit(0)
else:
    with open(control, "w") as fifo:
        fifo.write(sys.stdin.read())
"""

# The stand-in tritonserver: records its environment, answers /v2/health/ready on --http-port,
# exits 0 on SIGTERM.
STAND_IN_SERVER = """#!{python}
import http.server, json, os, signal, sys
port = int(next(a for a in sys.argv if a.startswith("--http-port=")).split("=")[1])
with open(os.environ["STAND_IN_ENV_FILE"], "w") as out:
    json.dump(dict(os.environ), out)
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v2/health/ready" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Ready)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
"""


def write_script(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def stand_in_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in nvidia-cuda-mps-control first on PATH; no MPS variables set."""
    bin_dir = tmp_path / "bin"
    write_script(bin_dir, "nvidia-cuda-mps-control", STAND_IN_CONTROL)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name in (PIPE_DIRECTORY_ENV, LOG_DIRECTORY_ENV, "CUDA_VISIBLE_DEVICES", "STAND_IN_MODE"):
        monkeypatch.delenv(name, raising=False)
    return bin_dir


@pytest.fixture
def no_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without nvidia-cuda-mps-control (this machine has none anywhere), no MPS variables."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for name in (PIPE_DIRECTORY_ENV, LOG_DIRECTORY_ENV):
        monkeypatch.delenv(name, raising=False)


def wait_gone(path: Path, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.02)
    return False


class TestCommandsAndEnvironment:
    def test_the_daemon_stays_in_the_foreground_and_quit_goes_through_stdin(self) -> None:
        assert daemon_command("/usr/bin/nvidia-cuda-mps-control") == [
            "/usr/bin/nvidia-cuda-mps-control",
            "-f",
        ]
        assert quit_command("/x/nvidia-cuda-mps-control") == (
            ["/x/nvidia-cuda-mps-control"],
            "quit\n",
        )

    def test_client_environment_names_the_folders(self, tmp_path: Path) -> None:
        folders = MpsDirectories(tmp_path / "pipe", tmp_path / "log")
        assert client_environment(folders, {}) == {
            PIPE_DIRECTORY_ENV: str(tmp_path / "pipe"),
            LOG_DIRECTORY_ENV: str(tmp_path / "log"),
        }

    def test_visible_devices_by_index_become_uuids_for_daemon_and_clients(
        self, tmp_path: Path
    ) -> None:
        folders = MpsDirectories(tmp_path / "pipe", tmp_path / "log")
        table = {0: "GPU-aaaa", 1: "GPU-bbbb", 2: "GPU-cccc"}
        env = client_environment(folders, {"CUDA_VISIBLE_DEVICES": "2,0"}, table)
        assert env["CUDA_VISIBLE_DEVICES"] == "GPU-cccc,GPU-aaaa"
        # UUIDs already: left as they are (the process keeps its own value)
        env = client_environment(folders, {"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}, table)
        assert "CUDA_VISIBLE_DEVICES" not in env
        assert visible_devices_as_uuids("1, GPU-cccc ,MIG-dd", table) == "GPU-bbbb,GPU-cccc,MIG-dd"

    @pytest.mark.parametrize("value", ["7", "gpu0", "0,x"])
    def test_an_unknown_visible_device_is_refused_by_name(self, value: str) -> None:
        with pytest.raises(MpsError, match=r"CUDA_VISIBLE_DEVICES=.*neither a GPU UUID"):
            visible_devices_as_uuids(value, {0: "GPU-aaaa"})

    def test_running_daemon_needs_the_variable_and_the_control_pipe(self, tmp_path: Path) -> None:
        pipe = tmp_path / "pipe"
        pipe.mkdir()
        assert running_daemon({}) is None
        assert running_daemon({PIPE_DIRECTORY_ENV: ""}) is None
        assert running_daemon({PIPE_DIRECTORY_ENV: str(pipe)}) is None  # no daemon's pipe
        os.mkfifo(pipe / "control")
        found = running_daemon({PIPE_DIRECTORY_ENV: str(pipe), LOG_DIRECTORY_ENV: "/l"})
        assert found == MpsDirectories(pipe, Path("/l"))
        assert running_daemon({PIPE_DIRECTORY_ENV: str(pipe)}).log == Path("/var/log/nvidia-mps")


class TestMissingControlProgram:
    """nvidia-cuda-mps-control is not installed on this machine: the real refusal."""

    def test_find_refuses_with_what_to_do(self, no_control: None) -> None:
        with pytest.raises(MpsError) as info:
            find_mps_control()
        message = str(info.value)
        assert "nvidia-cuda-mps-control not found on PATH" in message
        assert PIPE_DIRECTORY_ENV in message  # the way to use a daemon started elsewhere

    def test_nothing_is_started_or_left_behind(self, no_control: None, tmp_path: Path) -> None:
        with pytest.raises(MpsError, match="not found on PATH"):
            MpsDaemon.attach_or_start(tmp_path / "mps")
        assert not (tmp_path / "mps").exists()

    def test_the_server_refuses_to_start(self, no_control: None, tmp_path: Path) -> None:
        server = TritonServer(
            device="gpu", gpus=[0], mps=True, user=None, supervise=False, guard=False
        )
        workdir = server._workdir
        with pytest.raises(ServerStartError, match="--mps: nvidia-cuda-mps-control not found"):
            server.start()
        assert server.mps is None and server.server_pid() is None
        assert not (workdir / "model_repository").exists()

    def test_a_running_daemon_needs_no_control_program(
        self, no_control: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pipe = tmp_path / "host-pipe"
        pipe.mkdir()
        os.mkfifo(pipe / "control")
        monkeypatch.setenv(PIPE_DIRECTORY_ENV, str(pipe))
        daemon = MpsDaemon.attach_or_start(tmp_path / "mps")
        assert not daemon.owned and daemon.pid is None
        assert daemon.client_environment()[PIPE_DIRECTORY_ENV] == str(pipe)
        assert daemon.stop() is None and (pipe / "control").exists()  # not ours: left running
        assert mps.describe(daemon) == f"attached to {pipe}"


class TestDaemonLifecycle:
    def test_started_with_private_folders_then_quit(
        self, stand_in_control: Path, tmp_path: Path
    ) -> None:
        root = tmp_path / "mps"
        daemon = MpsDaemon.attach_or_start(root)
        try:
            assert daemon.owned and daemon.pid is not None
            control = root / "pipe" / "control"
            assert stat.S_ISFIFO(control.stat().st_mode)
            env = json.loads((root / "log" / "daemon-env.json").read_text())
            assert env[PIPE_DIRECTORY_ENV] == str(root / "pipe")
            assert env[LOG_DIRECTORY_ENV] == str(root / "log")
            assert daemon.client_environment() == {
                PIPE_DIRECTORY_ENV: str(root / "pipe"),
                LOG_DIRECTORY_ENV: str(root / "log"),
            }
            assert mps.describe(daemon).startswith(f"started (pid {daemon.pid}")
            # A second user of the same folders attaches to it and leaves it running.
            other = MpsDaemon.attach_or_start(
                tmp_path / "other", environ=daemon.daemon_environment(os.environ)
            )
            assert not other.owned and other.directories.pipe == root / "pipe"
            other.stop()
            assert control.exists()
        finally:
            code = daemon.stop()
        assert code == 0  # it quit when asked (not killed)
        assert not control.exists()
        assert (root / "log" / "control.log").read_text() == "quit received\n"
        assert daemon.pid is None and daemon.stop() is None

    def test_a_daemon_that_ignores_quit_is_stopped_by_signal(
        self, stand_in_control: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("STAND_IN_MODE", "deaf")
        daemon = MpsDaemon.attach_or_start(tmp_path / "mps")
        started = time.monotonic()
        code = daemon.stop(timeout_s=0.5)
        assert code is not None and code < 0  # ended by a signal
        assert time.monotonic() - started < 8

    def test_a_daemon_that_fails_is_reported_with_its_log(
        self, stand_in_control: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("STAND_IN_MODE", "broken")
        with pytest.raises(MpsError, match=r"exited with code 3[\s\S]*cannot open the GPU"):
            MpsDaemon.attach_or_start(tmp_path / "mps")


class TestServerUnderMps:
    def test_options_refuse_mps_on_the_cpu(self) -> None:
        with pytest.raises(ValueError, match=r"mps .* not with device='cpu'"):
            ServerOptions(device="cpu", mps=True)

    def test_the_server_and_its_restarts_get_the_daemons_environment(
        self, stand_in_control: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        server_script = write_script(tmp_path / "server-bin", "tritonserver", STAND_IN_SERVER)
        env_file = tmp_path / "server-env.json"
        monkeypatch.setenv("STAND_IN_ENV_FILE", str(env_file))
        server = TritonServer(
            device="gpu",
            gpus=[0],
            mps=True,
            user=None,
            supervise=False,
            guard=False,
            tritonserver=str(server_script),
            startup_timeout_s=30,
        )
        workdir = server._workdir
        with server:
            assert server.mps is not None and server.mps.owned
            pipe = workdir / "mps" / "pipe"
            assert (pipe / "control").exists()
            env = json.loads(env_file.read_text())
            assert env[PIPE_DIRECTORY_ENV] == str(pipe)
            assert env[LOG_DIRECTORY_ENV] == str(workdir / "mps" / "log")
            assert server.environment()[PIPE_DIRECTORY_ENV] == str(pipe)
        assert server.mps is None
        assert wait_gone(pipe / "control")  # the daemon quit after the server

    def test_cli_and_e2e_take_the_lever_options(self) -> None:
        import argparse

        parser = argparse.ArgumentParser()
        launcher.add_lever_arguments(parser)
        args = parser.parse_args(
            ["--segmentation-batch", "64", "--segmentation-queue-delay-us", "500", "--mps"]
        )
        assert (args.segmentation_batch, args.segmentation_queue_delay_us, args.mps) == (
            64,
            500,
            True,
        )
        defaults = parser.parse_args([])
        assert (defaults.segmentation_batch, defaults.mps) == (None, False)
