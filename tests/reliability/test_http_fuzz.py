"""A small HTTP fuzzer of our own against the inference and health endpoints: malformed JSON,
wrong Content-Length, binary-tensor header garbage, bad methods and paths, random bytes. The
server answers each (or closes) without crashing or hanging, and then serves normally."""

from __future__ import annotations

import json
import random
import socket
import time

import pytest

PATHS = [
    "/v2/models/background_blur/infer",
    "/v2/models/background_blur/versions/1/infer",
    "/v2/health/ready",
    "/v2/health/live",
    "/v2/models/background_blur/ready",
    "/v2/models/background_blur",
    "/v2/models/%00/infer",
    "/v2/models/../../etc/passwd/infer",
    "/v2/" + "a" * 5000,
]


def _valid_body(rng: random.Random) -> dict:
    h, w = rng.randint(1, 4), rng.randint(1, 4)
    return {
        "inputs": [
            {
                "name": "FRAMES",
                "shape": [1, h, w, 3],
                "datatype": "UINT8",
                "data": [0] * (h * w * 3),
            }
        ]
    }


def _mutate_json(rng: random.Random) -> bytes:
    body = _valid_body(rng)
    tensor = body["inputs"][0]
    choice = rng.randrange(10)
    if choice == 0:
        tensor["shape"] = [rng.randint(-5, 2**40) for _ in range(rng.randint(0, 6))]
    elif choice == 1:
        tensor["datatype"] = rng.choice(["UINT8X", "", "BYTES", "FP32", None, 7])
    elif choice == 2:
        tensor["data"] = rng.choice([None, "abc", [[1, 2], [3]], [1.5] * 3, {"a": 1}, [-1] * 12])
    elif choice == 3:
        body["parameters"] = rng.choice([[], "x", {"blur_sigma": {"a": 1}}, {"": None}])
    elif choice == 4:
        body["inputs"] = rng.choice([None, {}, "FRAMES", [None], [[]]])
    elif choice == 5:
        tensor["parameters"] = {"binary_data_size": rng.randint(-10, 2**40)}
    elif choice == 6:
        body["outputs"] = [{"name": rng.choice(["NOPE", "", "MASK"]), "parameters": [1]}]
    elif choice == 7:
        del tensor[rng.choice(["name", "shape", "datatype", "data"])]
    elif choice == 8:
        body["id"] = "x" * rng.randint(0, 10000)
    text = json.dumps(body).encode()
    if choice == 9:  # truncated or corrupted JSON
        cut = rng.randint(0, len(text))
        text = text[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
    return text


def _request(rng: random.Random) -> tuple[bytes, bool]:
    """A fuzzed raw HTTP request and whether it is complete (its body is all there)."""
    path = rng.choice(PATHS)
    method = rng.choice(["POST", "POST", "POST", "GET", "PUT", "DELETE", "FOO", "POST\x00"])
    headers = {"Host": "localhost"}
    kind = rng.randrange(6)
    complete = True
    if kind == 0:
        body = _mutate_json(rng)
    elif kind == 1:  # binary tensor extension with a bogus JSON header length
        json_part = json.dumps(_valid_body(rng)).encode()
        body = json_part + bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        headers["Inference-Header-Content-Length"] = rng.choice(
            [str(len(json_part) + rng.randint(-20, 20)), "-1", "abc", str(2**64), "0"]
        )
    elif kind == 2:
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 2048)))
    elif kind == 3:  # Content-Length smaller than the body
        body = _mutate_json(rng)
        headers["Content-Length"] = str(max(0, len(body) - rng.randint(1, 50)))
    elif kind == 4:  # Content-Length larger than the body: the server waits for the rest
        body = _mutate_json(rng)
        headers["Content-Length"] = str(len(body) + rng.randint(1, 10**9))
        complete = False
    else:  # header garbage
        body = _mutate_json(rng)
        headers[rng.choice(["Content-Type", "X\x01Y", "Transfer-Encoding", "Expect"])] = rng.choice(
            ["chunked", "100-continue", "\xff\xfe", "a" * 9000, "gzip"]
        )
        complete = headers.get("Transfer-Encoding") != "chunked"
    headers.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n".encode("latin-1")
    head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
    return head + b"\r\n" + body, complete


def _exchange(port: int, payload: bytes, timeout_s: float) -> bytes | None:
    """Send ``payload``; the first bytes of the answer, b"" when closed, None on timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(payload)
            return sock.recv(256)
        except TimeoutError:
            return None
        except ConnectionError:
            return b""


@pytest.mark.parametrize("seed", [1, 2])
def test_http_fuzz_no_crash_no_hang(server_pool, rel, seed) -> None:
    server = server_pool.get("cpu", "fixed_ellipse")
    rng = random.Random(seed)
    hangs = []
    started = time.monotonic()
    for index in range(100):
        payload, complete = _request(rng)
        answer = _exchange(server.http_port, payload, timeout_s=10.0 if complete else 0.5)
        if complete and answer is None:
            hangs.append(payload[:200])
        if answer:
            assert answer.startswith(b"HTTP/1."), answer
        if index % 20 == 19:
            assert server.is_ready(), f"not ready after request {index}"
    assert not hangs, hangs[:3]
    assert time.monotonic() - started < 120
    rel.assert_serves(server, "http")
    rel.assert_serves(server, "grpc")
