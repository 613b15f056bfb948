"""Fixtures of the reliability tests: helpers (``rel``) and dedicated servers.

Tests that break a server (floods with a tiny queue, ``kill -9``, SIGTERM) start their own
server (about 4 s on the CPU); the others use the session's shared ``server_pool`` server.
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bgblur.server.launcher import MODEL_REPOSITORY, TritonServer

MODEL = "background_blur"


def make_client(server: TritonServer, protocol: str, timeout_s: float = 60.0) -> Any:
    """A gRPC or HTTP client of ``server``."""
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient.InferenceServerClient(
        server.http_url, connection_timeout=timeout_s, network_timeout=timeout_s
    )


def frames(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB frames ``[batch, height, width, 3]``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def infer(client: Any, array: np.ndarray, **kwargs: Any) -> np.ndarray:
    """BLURRED for ``array`` (``kwargs`` go to ``client.infer``)."""
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    tensor = module.InferInput("FRAMES", list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array)
    result = client.infer(MODEL, [tensor], **kwargs)
    return result.as_numpy("BLURRED")


def pending_requests(server: TritonServer) -> dict[str, float]:
    """Triton's ``nv_inference_pending_request_count`` per model (requests queued or running)."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    pattern = r'^nv_inference_pending_request_count\{model="([^"]+)",version="\d+"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, flags=re.MULTILINE)}


def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def assert_serves(server: TritonServer, protocol: str = "grpc") -> None:
    """The server is ready and answers a valid request correctly."""
    assert server.is_ready()
    client = make_client(server, protocol)
    try:
        good = frames(1, 24, 32)
        assert infer(client, good).shape == good.shape
    finally:
        client.close()


@pytest.fixture(scope="session")
def rel() -> SimpleNamespace:
    """The helpers above, for test modules (``--import-mode=importlib`` has no sibling imports)."""
    return SimpleNamespace(
        make_client=make_client,
        frames=frames,
        infer=infer,
        pending_requests=pending_requests,
        wait_until=wait_until,
        assert_serves=assert_serves,
        MODEL=MODEL,
    )


def repository_with(tmp: Path, replacements: dict[str, str]) -> Path:
    """A copy of the model repository with text replaced in every config.pbtxt."""
    destination = tmp / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, destination, ignore=shutil.ignore_patterns("__pycache__"))
    for config in destination.glob("*/config.pbtxt"):
        text = config.read_text()
        for old, new in replacements.items():
            text = text.replace(old, new)
        config.write_text(text)
    return destination


@pytest.fixture(scope="session")
def repository_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``repository_factory({old: new})``: a patched copy of the model repository."""

    def make(replacements: dict[str, str]) -> Path:
        return repository_with(tmp_path_factory.mktemp("repo"), replacements)

    return make


@pytest.fixture
def unharmed(server: TritonServer) -> Iterator[None]:
    """The test's requests leave tritonserver running as the same process, serving over both
    protocols (``server``: the test module's own server fixture)."""
    pid = server.server_pid()
    restarts = len(server.supervisor.events)
    yield
    assert server.server_pid() == pid, "tritonserver was restarted"
    assert len(server.supervisor.events) == restarts
    assert_serves(server, "http")
    assert_serves(server, "grpc")
