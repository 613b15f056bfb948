"""The supervisor owns the lifecycle: tritonserver killed at random moments (start-up included) is
restarted every time and serves again within RECOVERY_S; a hung server (SIGSTOP of the server or
of a stub) turns unready at once through the guard and is restarted; the service command
``bgblur-server`` outlives every crash; ``/dev/shm`` holds only the live stubs' regions during
the run and none of the launch's after the stop."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bgblur.server.launcher import TritonServer, free_port
from bgblur.server.supervisor import ServerState, child_pids, shm_regions, stub_processes

# A restart on the CPU machine: ~5-8 s of model loading, plus the backoff (capped at
# BACKOFF_MAX_S here; the default cap is 30 s, docs/reliability.md).
BACKOFF_MAX_S = 2.0
RECOVERY_S = 40.0
KILLS = 10
# The hang check as the tests run it: readiness false within PROBE_INTERVAL_S + PROBE_TIMEOUT_S,
# a restart after PROBE_FAILURES misses.
PROBE_INTERVAL_S, PROBE_TIMEOUT_S, PROBE_FAILURES = 1.0, 2.0, 2


def _ready_at(http_port: int) -> bool:
    """``/v2/health/ready`` on the guard's port answers 200."""
    try:
        url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _serves(server: TritonServer, rel) -> bool:
    try:
        rel.assert_serves(server, "http")
        return True
    except Exception:
        return False


def test_kills_at_random_moments_are_each_followed_by_service(rel) -> None:
    rng = random.Random(10)
    server = TritonServer(
        device="cpu",
        segmentation_model="fixed_ellipse",
        supervision={"backoff_max_s": BACKOFF_MAX_S, "probe_interval_s": 0},
    )
    prefix = server.stub_shm_prefix
    took: list[tuple[str, float]] = []
    last_killed = None
    with server:
        for kill in range(KILLS):
            during_startup = kill % 2 == 1
            if during_startup:
                # The previous kill's restart is under way: strike while it loads its models.
                assert rel.wait_until(
                    lambda: server.supervisor.state is not ServerState.SERVING, 5, step_s=0.01
                )
                assert rel.wait_until(
                    lambda old=last_killed: server.server_pid() not in (None, old), 10, step_s=0.01
                )
                time.sleep(rng.uniform(0.0, 3.0))
            else:
                time.sleep(rng.uniform(0.0, 1.0))
            pid = server.server_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed, last_killed = time.monotonic(), pid
            if during_startup or kill == KILLS - 1:
                assert rel.wait_until(lambda: _serves(server, rel), RECOVERY_S, step_s=0.2), (
                    f"kill {kill}: not serving after {RECOVERY_S} s; {server.supervisor.events[-1]}"
                )
                took.append((f"{kill}{'s' if during_startup else ''}", time.monotonic() - killed))
                # Only the live stubs' regions: none of a killed start-up is left behind.
                live = {s.shm_region for s in stub_processes(server.server_pid())}
                assert set(shm_regions(prefix)) <= live, set(shm_regions(prefix)) - live
        assert server.is_ready()
        assert server.supervisor.failures >= KILLS
    print("\nkill -> served again (s):", ", ".join(f"{k}:{t:.1f}" for k, t in took))
    assert not shm_regions(prefix)
    assert max(t for _, t in took) < RECOVERY_S


@pytest.mark.parametrize("target", ["tritonserver", "segmentation"])
def test_a_hung_process_turns_readiness_false_and_is_restarted(rel, target) -> None:
    with TritonServer(
        device="cpu",
        segmentation_model="fixed_ellipse",
        supervision={
            "probe_interval_s": PROBE_INTERVAL_S,
            "probe_timeout_s": PROBE_TIMEOUT_S,
            "probe_failures": PROBE_FAILURES,
        },
    ) as server:
        assert _ready_at(server.http_port)
        pid = server.server_pid()
        victim = pid
        if target != "tritonserver":
            victim = next(s.pid for s in stub_processes(pid) if s.model == target)
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            unready_within = PROBE_INTERVAL_S + PROBE_TIMEOUT_S + 2.0
            assert rel.wait_until(
                lambda: not _ready_at(server.http_port), unready_within, step_s=0.1
            )
            unready = time.monotonic() - stopped
            assert rel.wait_until(lambda: server.server_pid() != pid, 30), "not restarted"
        finally:
            # The restart SIGKILLed it; one left alive (a failed test) must not stay stopped.
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)
        assert rel.wait_until(lambda: _serves(server, rel), RECOVERY_S, step_s=0.2)
        served = time.monotonic() - stopped
        assert _ready_at(server.http_port)
        assert "hung" in server.supervisor.events[-1].reason
    print(f"\n{target} SIGSTOP: unready after {unready:.1f} s, serving again after {served:.1f} s")


def _tritonserver_child(launcher_pid: int) -> int | None:
    for pid in child_pids(launcher_pid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"tritonserver"):
                return pid
        except OSError:
            continue
    return None


def test_the_service_command_outlives_every_crash(rel, tmp_path: Path) -> None:
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [
        sys.executable, "-m", "bgblur.server.launcher",
        "--device", "cpu", "--segmentation-model", "fixed_ellipse", "--quiet",
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
    ]  # fmt: skip
    log = (tmp_path / "service.log").open("wb")
    service = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert rel.wait_until(lambda: _ready_at(http), 120, step_s=0.5)
        for _ in range(3):
            pid = _tritonserver_child(service.pid)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert rel.wait_until(
                lambda old=pid: _tritonserver_child(service.pid) not in (None, old), 30
            )
            assert rel.wait_until(lambda: _ready_at(http), RECOVERY_S, step_s=0.2)
            assert service.poll() is None, "the service exited after a crash"
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        log.close()
    text = (tmp_path / "service.log").read_text(errors="replace")
    assert text.count("restarting tritonserver") >= 3, text[-2000:]
