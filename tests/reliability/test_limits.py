"""Payload limits: a request over MAX_REQUEST_BYTES is refused fast over HTTP (by the HTTP
guard: 413 from the declared Content-Length, before the body is read) and gRPC (by the gRPC
guard: INVALID_ARGUMENT naming the limit, from the declared shape), and refusing it again and
again leaves the server's memory where it was (RSS of the server and its stubs, and its
/dev/shm): nothing of it reaches Triton. Sizes stay ~300 MB so that CI stays fast and
memory-safe.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from bgblur.parameters import MAX_REQUEST_BYTES
from bgblur.server.launcher import TritonServer
from bgblur.server.request_checks import RequestLimits
from bgblur.server.supervisor import process_tree_rss_bytes, shm_regions, stub_processes

MB = 1 << 20
MAX_BODY_BYTES = RequestLimits().max_body_bytes


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    with TritonServer(device="cpu", segmentation_model="fixed_ellipse", supervise=False) as s:
        yield s


def _memory(server: TritonServer) -> tuple[int, int]:
    """(RSS of the server and its stubs, bytes of its stubs' /dev/shm regions)."""
    pid = server.server_pid()
    own = {s.shm_region for s in stub_processes(pid)}
    return process_tree_rss_bytes(pid), sum(v for k, v in shm_regions().items() if k in own)


def _refused(client, rel, frames: np.ndarray) -> float:
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        rel.infer(client, frames)
    if info.value.status() == "413":  # HTTP: the guard, from the Content-Length
        assert f"exceeds the per-request maximum of {MAX_BODY_BYTES} bytes" in info.value.message()
    else:
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value.status()
        assert f"per-request maximum of {MAX_REQUEST_BYTES} bytes" in info.value.message()
    return time.monotonic() - started


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_oversized_request_is_refused_fast_and_memory_stays_flat(server, rel, protocol) -> None:
    frames = np.zeros((3, 4320, 7680, 3), np.uint8)  # 3 frames of 8K: 298 MB
    assert frames.nbytes > MAX_REQUEST_BYTES
    client = rel.make_client(server, protocol)
    try:
        rel.infer(client, rel.frames(2, 720, 1280))
        rss0, shm0 = _memory(server)
        first = _refused(client, rel, frames)
        rss1, shm1 = _memory(server)
        took = [_refused(client, rel, frames) for _ in range(3)]
        rel.assert_serves(server, protocol)
        time.sleep(0.5)
        rss2, shm2 = _memory(server)
    finally:
        client.close()
    print(
        f"\n{protocol}: refused in {first:.2f} s then {max(took):.2f} s; RSS {rss0 / MB:.0f} -> "
        f"{rss1 / MB:.0f} -> {rss2 / MB:.0f} MB; stub shm {shm0 / MB:.0f} -> {shm1 / MB:.0f} "
        f"-> {shm2 / MB:.0f} MB"
    )
    assert max(first, *took) < 15.0
    # The guards refused it (HTTP: from the Content-Length; gRPC: from the declared shape):
    # nothing reached Triton, so neither the stubs' regions nor Triton's memory grew.
    assert shm1 - shm0 < 16 * MB and shm2 - shm1 < 16 * MB, (shm0, shm1, shm2)
    assert rss2 - rss0 < 64 * MB, (rss0, rss1, rss2)
