"""Each class of request that crashed, hung or starved Triton 2.51's HTTP front end, or reached
what it should not, replayed against the real server through the HTTP guard: the documented
refusal comes back, tritonserver is the same process afterwards (no crash, no restart), and a
valid request is served right after. Raw sockets where a client library would not send it."""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from bgblur.server.launcher import TritonServer
from bgblur_client.admin_key import admin_headers

BODY_TIMEOUT_S = 1.0
INFER = "/v2/models/background_blur/infer"


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    with TritonServer(
        device="cpu",
        segmentation_model="fixed_ellipse",
        guard_options={"body_timeout_s": BODY_TIMEOUT_S},
    ) as server:
        yield server


def _request(
    server: TritonServer,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        data=body,
        headers=headers or {},
        method=method or ("POST" if body is not None else "GET"),
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload) if payload else {}
    except ValueError:
        return status, {"raw": payload[:200]}


def _frames_json(shape, data) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "FRAMES", "shape": shape, "datatype": "UINT8", "data": data}]}
    ).encode()


def test_an_overflowing_shape_is_a_400_not_an_abort(server, unharmed) -> None:
    status, answer = _request(server, INFER, _frames_json([1, 2**31, 2**31, 3], list(range(30))))
    assert status == 400 and "declares 13835058055282163712 elements" in answer["error"]


@pytest.mark.parametrize(
    "path",
    [
        INFER,
        "/v2/logging",
        "/v2/trace/setting",
        "/v2/models/background_blur/trace/setting",
        "/v2/systemsharedmemory/region/x/register",
    ],
)
def test_deeply_nested_json_is_refused_on_every_endpoint(server, unharmed, path) -> None:
    body = b"[" * 2_000_000
    status, answer = _request(server, path, body, admin_headers("http"))
    assert status == 400 and "deeper than 16 levels" in answer["error"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compressed_body_is_a_415(server, unharmed, encoding) -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB that inflate from ~64 KiB
    status, answer = _request(server, INFER, bomb, {"Content-Encoding": encoding})
    assert status == 415 and "Content-Encoding" in answer["error"]


def test_many_parameters_are_refused_fast_while_others_are_served(server, rel, unharmed) -> None:
    body = json.loads(_frames_json([1, 2, 2, 3], [0] * 12))
    body["parameters"] = {f"p{i}": i for i in range(100_000)}
    raw = json.dumps(body).encode()
    served: list[float] = []
    stop = threading.Event()

    def other_client() -> None:
        client = rel.make_client(server, "grpc")
        while not stop.is_set():
            started = time.monotonic()
            rel.infer(client, rel.frames(1, 16, 16))
            served.append(time.monotonic() - started)
        client.close()

    worker = threading.Thread(target=other_client)
    worker.start()
    try:
        started = time.monotonic()
        for _ in range(5):
            status, answer = _request(server, INFER, raw)
            assert status == 400 and "100000 parameters; at most 64" in answer["error"]
        took = (time.monotonic() - started) / 5
    finally:
        stop.set()
        worker.join(30)
    assert took < 2.0, took
    assert served and max(served) < 5.0, max(served)


def test_a_huge_parameter_value_is_not_echoed(server, unharmed) -> None:
    body = json.loads(_frames_json([1, 1, 1, 3], [0, 0, 0]))
    body["parameters"] = {"blur_sigma": "9" * 50_000_000}
    status, answer = _request(server, INFER, json.dumps(body).encode())
    assert status == 413 and len(answer["error"]) < 300
    body["parameters"] = {"blur_sigma": "9" * 100_000}
    status, answer = _request(server, INFER, json.dumps(body).encode())
    assert status == 400 and len(answer["error"]) < 300


def test_an_oversized_content_length_is_a_413_before_the_body(server, unharmed) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {8 * 7680 * 4320 * 3}\r\n\r\n".encode()
        )
        answer = sock.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413") and "per-request maximum" in answer


def test_an_incomplete_body_is_a_408_within_the_body_timeout(server, unharmed) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(
            f'POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{"inp'.encode()
        )
        answer = sock.recv(4096).decode(errors="replace")
    took = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert BODY_TIMEOUT_S <= took < BODY_TIMEOUT_S + 5, took


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/logging", b'{"log_verbose_level": 1}'),
        ("/v2/logging", None),
        ("/v2/trace/setting", b'{"trace_level": ["TIMESTAMPS"]}'),
        ("/v2/models/background_blur/trace/setting", b'{"trace_rate": "1"}'),
        ("/v2//logging", None),
        ("/v2/%6Cogging", None),
    ],
)
def test_logging_and_trace_need_the_key(server, unharmed, path, body) -> None:
    status, answer = _request(server, path, body)
    assert status == 403 and "restricted" in answer["error"]
    status, _ = _request(server, path, body, {"bgblur-admin-key": "guess"})
    assert status == 403


def test_logging_with_the_key_is_forwarded(server, unharmed) -> None:
    status, answer = _request(server, "/v2/logging", None, admin_headers("http"))
    assert status == 200 and "log_verbose_level" in answer


def test_logging_and_trace_over_grpc_need_the_key(server, unharmed) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.update_log_settings({"log_verbose_level": 1})
        with pytest.raises(InferenceServerException, match="restricted"):
            client.update_trace_settings(settings={"trace_rate": "1"})
        assert "log_verbose_level" in str(client.get_log_settings(headers=admin_headers("grpc")))
    finally:
        client.close()


def test_no_region_outside_the_project_prefix_can_be_registered(server, unharmed) -> None:
    """A root-only /dev/shm file and a stub's own IPC region: refused even with the key, so no
    inference can read them (as input) or write them (as output)."""
    secret = Path("/dev/shm/bgblur-guard-test-secret")
    secret.write_bytes(b"secret" * 64)
    os.chmod(secret, 0o600)
    stub_region = next(iter(os.listdir("/dev/shm")), "x")
    stub_regions = [n for n in os.listdir("/dev/shm") if n.startswith(server.stub_shm_prefix)]
    assert stub_regions, "the stubs' regions carry the launch's prefix"
    try:
        for key in (f"/{secret.name}", f"/{stub_regions[0]}", "/../etc/passwd", f"/{stub_region}"):
            body = json.dumps({"key": key, "offset": 0, "byte_size": 64}).encode()
            status, answer = _request(
                server, "/v2/systemsharedmemory/region/r/register", body, admin_headers("http")
            )
            assert status == 403 and "refused" in answer["error"], (key, answer)
    finally:
        secret.unlink()
    status, answer = _request(server, "/v2/systemsharedmemory/status", None, admin_headers("http"))
    assert status == 200 and answer == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_frames_json([1, 2, 2, 3], "abc"), "must be a JSON array"),
        (_frames_json([1, 2, 2, 3], [[1, 2], [3]]), "holds 3 values"),
        (_frames_json([1, 2, 2, 3], [*range(11), 1e999]), "non-finite"),
        (_frames_json([1, 2, 2, 3], []).replace(b"[]", b"[1e999]"), "non-finite"),
        (_frames_json([1, 2, 2, 3], [*range(11), 300]), "not a UINT8 value"),
        (b'{"inputs": [', "not valid JSON"),
    ],
)
def test_malformed_inference_json_is_a_400(server, unharmed, body, expected) -> None:
    status, answer = _request(server, INFER, body)
    assert status == 400 and expected in answer["error"], answer


@pytest.mark.parametrize("sequence_id", [[1], {"a": 1}, -3, 1.5, True])
def test_a_wrong_typed_sequence_id_is_a_400(server, unharmed, sequence_id) -> None:
    body = json.loads(_frames_json([1, 1, 1, 3], [0, 0, 0]))
    body["parameters"] = {"sequence_id": sequence_id}
    status, answer = _request(
        server, "/v2/models/background_blur_video/infer", json.dumps(body).encode()
    )
    assert status == 400 and "sequence_id" in answer["error"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(
    ("name", "value"), [("bilateral_sigma_space", 5e-324), ("blur_sigma", 1e-300)]
)
def test_a_sigma_so_small_the_mask_degenerates_is_invalid(
    server, rel, unharmed, protocol, name, value
) -> None:
    client = rel.make_client(server, protocol)
    try:
        with pytest.raises(InferenceServerException) as info:
            rel.infer(client, rel.frames(1, 16, 16), parameters={name: value})
    finally:
        client.close()
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert f"parameter '{name}' must be in [0.01" in info.value.message()


def test_binary_requests_pass_the_guard_unchanged(server, rel) -> None:
    """A 720p frame through the guard equals the same frame sent to Triton's own port."""
    import tritonclient.http as httpclient

    frames = rel.frames(2, 720, 1280, seed=3)
    outputs = []
    for port in (server.http_port, server.triton_http_port):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        try:
            outputs.append(rel.infer(client, frames))
        finally:
            client.close()
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_triton_http_listens_on_loopback_only_behind_the_guard(server) -> None:
    args = server.command(server._workdir)
    assert f"--http-port={server.triton_http_port}" in args
    assert "--http-address=127.0.0.1" in args
    assert server.triton_http_port != server.http_port


def test_a_large_binary_body_that_stalls_is_a_408_and_triton_is_left_clean(
    server, unharmed
) -> None:
    """A large binary request flows on to Triton as it arrives (its header checked first); one
    that stops half way is answered 408 at the deadline and Triton holds nothing open."""
    frame_bytes = 720 * 1280 * 3
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "FRAMES",
                    "shape": [1, 720, 1280, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": frame_bytes},
                }
            ]
        }
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(header) + frame_bytes}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n".encode()
            + header
            + bytes(frame_bytes // 2)
        )
        answer = sock.recv(4096).decode(errors="replace")
    took = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert BODY_TIMEOUT_S <= took < BODY_TIMEOUT_S + 5, took


def test_a_large_binary_body_with_a_bad_header_is_refused_before_its_data(server, unharmed) -> None:
    header = _frames_json([1, 2**31, 2**31, 3], None).replace(b', "data": null', b"")
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(header) + (8 << 20)}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n".encode()
            + header
        )
        answer = sock.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 400") and "declares" in answer, answer[:300]


_json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.lists(st.integers(-2, 2**33), max_size=6),
    data=_json,
    datatype=st.sampled_from(["UINT8", "FP32", "BYTES", "INT64", "BOOL", "nope"]),
    parameters=st.dictionaries(
        st.sampled_from(["blur_sigma", "sequence_id", "priority", "timeout", "x"]),
        _json,
        max_size=3,
    ),
    depth=st.integers(0, 40),
    encoding=st.sampled_from([None, None, "gzip", "identity", "x-custom"]),
)
def test_structured_bodies_through_the_guard_never_crash_or_500(
    server, shape, data, datatype, parameters, depth, encoding
) -> None:
    pid = server.server_pid()
    tensor = {"name": "FRAMES", "shape": shape, "datatype": datatype, "data": data}
    for _ in range(depth):
        tensor["data"] = [tensor["data"]]
    body = json.dumps({"inputs": [tensor], "parameters": parameters}).encode()
    headers = {"Content-Encoding": encoding} if encoding else {}
    status, answer = _request(server, INFER, body, headers)
    assert status in (200, 400, 413, 415), (status, answer)
    assert server.server_pid() == pid


def _closed_within(sock: socket.socket, timeout_s: float, trickle: bytes = b"") -> float | None:
    """Seconds until the peer closes ``sock`` while ``trickle`` is sent a byte every 0.2 s
    (then nothing); None when it stays open for ``timeout_s``."""
    start = time.monotonic()
    sock.settimeout(0.2)
    sent = 0
    while time.monotonic() - start < timeout_s:
        try:
            if sent < len(trickle):
                sock.sendall(trickle[sent : sent + 1])
                sent += 1
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return None


def test_slow_headers_and_idle_connections_are_closed_while_others_are_served(server, rel) -> None:
    from bgblur.server.guard import GuardSettings, HttpGuard
    from bgblur.server.launcher import free_port

    guard = HttpGuard(
        GuardSettings(
            host="127.0.0.1",
            port=free_port(),
            upstream_port=server.triton_http_port,
            admin_key=server.admin_key,
            header_timeout_s=1.0,
            keepalive_timeout_s=2.0,
        )
    ).start()
    port = guard.settings.port
    try:
        # Headers a byte every 0.2 s (never complete): closed after ~1 s (checked every 0.25 s).
        slow = socket.create_connection(("127.0.0.1", port))
        served: list[int] = []

        def serve_meanwhile() -> None:
            client = httpclient_for(port)
            try:
                for _ in range(3):
                    served.append(rel.infer(client, rel.frames(1, 24, 32)).shape[0])
            except Exception as exc:  # shown by the assertion below
                served.append(f"{exc!r} {exc}")
            finally:
                client.close()

        thread = threading.Thread(target=serve_meanwhile)
        thread.start()
        took = _closed_within(slow, 10.0, b"POST /v2/models/background_blur/infer HTTP/1.1\r\n" * 9)
        thread.join(60)
        slow.close()
        assert took is not None and 0.9 < took < 3.0, took
        assert served == [1, 1, 1]
        # An idle keep-alive connection after a response: closed after its keep-alive time.
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200" in idle.recv(4096).split(b"\r\n", 1)[0]
        took = _closed_within(idle, 10.0)
        idle.close()
        assert took is not None and 1.5 < took < 5.0, took
        assert guard.closed_for_slow_headers >= 1
    finally:
        guard.stop()


def httpclient_for(port: int):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
