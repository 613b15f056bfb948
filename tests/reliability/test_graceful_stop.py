"""Graceful stop under load: requests in flight through the ensemble finish, new ones are
refused at once, the server exits 0 within --exit-timeout-secs and leaves no ``/dev/shm``."""

from __future__ import annotations

import concurrent.futures
import threading
import time

from tritonclient.utils import InferenceServerException

from bgblur.server.launcher import EXIT_TIMEOUT_S, TritonServer
from bgblur.server.supervisor import shm_regions, stub_processes


def test_stop_under_load_finishes_in_flight_and_refuses_new(rel) -> None:
    server = TritonServer(device="cpu", segmentation_model="fixed_ellipse").start()
    own = {s.shm_region for s in stub_processes(server.server_pid())}
    process = server._process
    # 8 frames of 1080p: ~1 s of postprocess per request on the 2-core CPU machine, so that the
    # 4 requests (one execution each at most: max batch 8) stay in flight for seconds.
    array = rel.frames(8, 1080, 1920)

    def send(index: int) -> str:
        client = rel.make_client(server, "grpc" if index % 2 else "http")
        try:
            out = rel.infer(client, array)
            return "ok" if out.shape == array.shape else "wrong shape"
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(send, i) for i in range(4)]
        assert rel.wait_until(lambda: sum(rel.pending_requests(server).values()) >= 3, 10)
        stopped: dict[str, float | int | None] = {}

        def stop() -> None:
            started = time.monotonic()
            stopped["code"] = server.stop()
            stopped["took"] = time.monotonic() - started

        stopper = threading.Thread(target=stop)
        stopper.start()
        time.sleep(0.3)  # the drain has begun: the entry model is unloading
        refused_in = time.monotonic()
        late = rel.make_client(server, "grpc")
        try:
            rel.infer(late, rel.frames(1, 16, 16), client_timeout=10)
            late_outcome = "served"
        except InferenceServerException as exc:
            late_outcome = exc.message()
        finally:
            late.close()
        refused_in = time.monotonic() - refused_in
        results = [f.result(timeout=60) for f in in_flight]
        stopper.join(EXIT_TIMEOUT_S + 30)
    print(f"\nrefused during the drain in {refused_in:.2f} s: {late_outcome}")
    assert results == ["ok"] * 4
    assert late_outcome != "served" and refused_in < 2.0, (late_outcome, refused_in)
    assert stopped["code"] == 0 and process.returncode == 0
    assert stopped["took"] < 2 * EXIT_TIMEOUT_S + 5, stopped
    assert not own & set(shm_regions())
