"""The container's way of serving, run for real on this machine: ``bgblur.server.deploy serve``
builds its ``TritonServer`` from ``container_server_options`` (a prepared repository, an explicit
``tritonserver``, compose's flags, the key from ``$BGBLUR_ADMIN_KEY``). Here the same options
serve the embedded CPU repository with the bundled server: the HTTP guard answers in front, the
restricted APIs need the key, and the supervisor brings Triton back after a kill."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bgblur.server.deploy import container_server_options
from bgblur.server.launcher import (
    TritonServer,
    bundled_server_environment,
    prepare_backends,
    render_model_repository,
    tritonserver_home,
)
from bgblur_client.admin_key import ADMIN_HEADER

KEY = "container-admin-key-0123456789abcdef"
RECOVERY_S = 60.0


def _status(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def container_like_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tritonserver_home()
    # The container's server finds its libraries and Python by itself; the bundled one needs
    # what the launcher gives it, so the test environment carries it.
    env = bundled_server_environment(home)
    for name in ("PATH", "LD_LIBRARY_PATH"):
        monkeypatch.setenv(name, env[name])
    repository = render_model_repository(
        tmp_path / "models", device="cpu", gpus=[], segmentation_model="fixed_ellipse"
    )
    options = container_server_options(
        repository,
        gpus=[],
        admin_key=KEY,
        tritonserver=str(home / "bin" / "tritonserver"),
        address="127.0.0.1",
        exit_timeout_s=5,
        startup_timeout_s=120,
        triton_args=["--log-verbose=0", "--metrics-interval-ms=2000"],
    )
    # What differs from the container: the CPU, free ports, the bundled backends, a log file.
    options = dataclasses.replace(
        options,
        device="cpu",
        http_port=None,
        grpc_port=None,
        metrics_port=None,
        backend_directory=prepare_backends(home),
        verbose=False,
        supervision={"backoff_max_s": 2.0, "probe_interval_s": 0},
    )
    with TritonServer(options) as server:
        yield server


def test_the_container_s_options_serve_behind_the_guard_and_the_supervisor(
    container_like_server: TritonServer, rel
) -> None:
    server = container_like_server
    base = f"http://127.0.0.1:{server.http_port}"
    assert server.triton_http_port != server.http_port  # Triton's own port is behind the guard
    rel.assert_serves(server, "http")
    rel.assert_serves(server, "grpc")

    logging_body = json.dumps({"log_verbose_level": 0}).encode()
    assert _status(f"{base}/v2/logging", data=logging_body) == 403
    assert _status(f"{base}/v2/logging", {ADMIN_HEADER: "wrong"}, logging_body) == 403
    assert _status(f"{base}/v2/logging", {ADMIN_HEADER: KEY}, logging_body) == 200

    pid = server.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert rel.wait_until(lambda: server.server_pid() not in (None, pid), 10)

    def serves() -> bool:
        try:
            rel.assert_serves(server, "http")
            return True
        except Exception:
            return False

    assert rel.wait_until(serves, RECOVERY_S, step_s=0.5)
    assert server.supervisor is not None and server.supervisor.failures >= 1
