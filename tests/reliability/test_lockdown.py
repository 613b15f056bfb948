"""Locked-down defaults: loopback only; the model-repository API (load, unload, index; a load may
carry model files) needs the admin key; so does shared-memory registration (refused to everyone
when off); no request parameter reaches the filesystem."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bgblur.server.launcher import TritonServer
from bgblur_client.admin_key import ADMIN_HEADER, GRPC_ADMIN_HEADER, admin_headers


@pytest.fixture(scope="module")
def open_server(server_pool) -> TritonServer:
    return server_pool.get("cpu", "fixed_ellipse")


@pytest.fixture(scope="module")
def shm_off_server() -> Iterator[TritonServer]:
    with TritonServer(
        device="cpu", segmentation_model="fixed_ellipse", shared_memory="off", supervise=False
    ) as server:
        yield server


def _post(server: TritonServer, path: str, body: dict, headers: dict | None = None) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        data=json.dumps(body).encode(),
        headers=headers or {},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent: only picks a route
            ip = sock.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_binds_loopback_by_default(open_server) -> None:
    args = " ".join(open_server.command(open_server._workdir))
    for flag in (
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
    ):
        assert flag in args
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    for port in (open_server.http_port, open_server.grpc_port, open_server.metrics_port):
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(2)
            sock.connect((ip, port))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/repository/index", {}),
        ("/v2/repository/models/background_blur/unload", {}),
        ("/v2/repository/models/preprocess/load", {}),
        # A load that carries its own model.py: code execution if it were allowed.
        (
            "/v2/repository/models/evil/load",
            {
                "parameters": {
                    "config": json.dumps({"backend": "python", "max_batch_size": 0}),
                    "file:1/model.py": "aW1wb3J0IG9zCg==",
                }
            },
        ),
    ],
)
def test_model_repository_api_needs_the_key_over_http(open_server, rel, path, body) -> None:
    assert _post(open_server, path, body) == 403
    assert _post(open_server, path, body, {ADMIN_HEADER: "guess"}) == 403
    rel.assert_serves(open_server)


def test_model_repository_api_needs_the_key_over_grpc(open_server, rel) -> None:
    client = grpcclient.InferenceServerClient(open_server.grpc_url)
    try:
        for call in (
            lambda: client.get_model_repository_index(),
            lambda: client.unload_model("background_blur"),
            lambda: client.load_model(
                "evil", config='{"backend":"python"}', files={"file:1/model.py": b"import os"}
            ),
        ):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        headers = {GRPC_ADMIN_HEADER: open_server.admin_key}
        index = client.get_model_repository_index(headers=headers, as_json=True)
        assert {"background_blur", "preprocess"} <= {m["name"] for m in index["models"]}
    finally:
        client.close()
    assert _post(open_server, "/v2/repository/index", {}, open_server.admin_headers) == 200
    rel.assert_serves(open_server)


def test_shared_memory_registration_needs_the_key(open_server, rel) -> None:
    """On by default, for holders of the admin key only (the client library sends it)."""
    assert open_server.shared_memory_open
    grpc = grpcclient.InferenceServerClient(open_server.grpc_url)
    http = httpclient.InferenceServerClient(open_server.http_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            grpc.register_system_shared_memory("x", "/bgblur_lockdown_x", 64)
        with pytest.raises(InferenceServerException, match="restricted"):
            http.register_system_shared_memory("x", "/bgblur_lockdown_x", 64)
        with pytest.raises(InferenceServerException, match="restricted"):
            http.get_system_shared_memory_status()
        assert http.get_system_shared_memory_status(headers=admin_headers("http")) == []
        assert (
            grpc.get_system_shared_memory_status(headers=admin_headers("grpc"), as_json=True) == {}
        )
    finally:
        grpc.close()
        http.close()
    rel.assert_serves(open_server)


def test_shared_memory_off_refuses_even_the_key(shm_off_server, rel) -> None:
    grpc = grpcclient.InferenceServerClient(shm_off_server.grpc_url)
    http = httpclient.InferenceServerClient(shm_off_server.http_url)
    try:
        for client, protocol in ((grpc, "grpc"), (http, "http")):
            with pytest.raises(InferenceServerException, match="restricted"):
                client.register_system_shared_memory(
                    "x", "/bgblur_lockdown_x", 64, headers=admin_headers(protocol)
                )
        with pytest.raises(InferenceServerException, match="restricted"):
            http.get_system_shared_memory_status(headers=admin_headers("http"))
    finally:
        grpc.close()
        http.close()
    rel.assert_serves(shm_off_server)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(
    "parameters",
    [
        {"segmentation_model": "/etc/passwd"},
        {"segmentation_model": "../../../../tmp/evil.onnx"},
        {"runtime": "tensorrt"},
        {"weights": "/root/.ssh/id_rsa"},
        {"BGBLUR_FCN_WEIGHTS": "/tmp/x.pth"},
        {"model_path": "file:///etc/shadow"},
    ],
)
def test_no_request_parameter_reaches_the_filesystem(
    open_server, rel, protocol, parameters
) -> None:
    client = rel.make_client(open_server, protocol)
    try:
        with pytest.raises(InferenceServerException) as info:
            rel.infer(client, rel.frames(1, 16, 16), parameters=parameters)
    finally:
        client.close()
    name = next(iter(parameters))
    assert f"unknown parameter {name!r}" in info.value.message()
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_auto_shared_memory_falls_back_to_the_request_and_leaves_nothing(
    shm_off_server, protocol: str
) -> None:
    """``shared_memory="auto"`` where the server refuses registration: frames travel in the
    requests, and the probe's region is gone from ``/dev/shm`` (no leak per connection)."""
    from bgblur_client.transport import BlurClient

    before = set(Path("/dev/shm").glob(f"bgblur_{os.getpid()}_*"))
    url = shm_off_server.grpc_url if protocol == "grpc" else shm_off_server.http_url
    frames = np.full((2, 48, 64, 3), 90, np.uint8)

    with BlurClient(url, protocol=protocol, shared_memory="auto") as client:
        assert client.shared_memory == "none"
        assert "system: " in client.shared_memory_reason and "restricted" in (
            client.shared_memory_reason
        )
        blurred = client.blur(frames).blurred_nhwc_u8

    assert blurred.shape == frames.shape
    assert set(Path("/dev/shm").glob(f"bgblur_{os.getpid()}_*")) == before
