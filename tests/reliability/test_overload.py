"""Overload: the dynamic batchers' queue policy refuses a flood fast and clearly; request
timeouts, client deadlines and cancellation leave the server serving with nothing pending.

The flood runs against a server whose composing models have a queue of 2 (the shipped 64 would
take a flood of ~200 large requests on this CPU); the shipped values are checked as config.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from bgblur.server.launcher import MODEL_REPOSITORY, PYTHON_MODELS, TritonServer

REJECT = model_config_pb2.ModelQueuePolicy.TimeoutAction.REJECT


def _config(model: str) -> Any:
    text = (MODEL_REPOSITORY / model / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


SEQUENCE_MODELS = tuple(m for m in PYTHON_MODELS if _config(m).HasField("sequence_batching"))


@pytest.mark.parametrize("model", [m for m in PYTHON_MODELS if m not in SEQUENCE_MODELS])
def test_every_composing_model_has_a_bounded_rejecting_queue(model: str) -> None:
    config = _config(model)
    policy = config.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 64
    assert policy.timeout_action == REJECT
    assert policy.default_timeout_microseconds == 10_000_000
    assert policy.allow_timeout_override


def test_sequence_models_sit_behind_bounded_queues() -> None:
    """Triton's sequence batcher has no queue policy; a sequence-batched step (the stream
    ensemble's temporal_smoothing) is reached only through steps whose queues are bounded and
    reject, and handles a bounded number of streams at once."""
    assert SEQUENCE_MODELS == ("temporal_smoothing",)
    ensemble = _config("background_blur_stream")
    steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
    for model in SEQUENCE_MODELS:
        upstream = steps[: steps.index(model)]
        assert upstream, f"{model} is the first step of background_blur_stream"
        for step in upstream:
            policy = _config(step).dynamic_batching.default_queue_policy
            assert policy.max_queue_size == 64 and policy.timeout_action == REJECT, step
        oldest = _config(model).sequence_batching.oldest
        assert 0 < oldest.max_candidate_sequences <= 64


@pytest.fixture(scope="module")
def small_queue_server(repository_factory) -> Iterator[TritonServer]:
    repository = repository_factory({"max_queue_size: 64": "max_queue_size: 2"})
    server = TritonServer(
        device="cpu", segmentation_model="fixed_ellipse", model_repository=repository
    )
    with server:
        yield server


def _flood(server: TritonServer, rel: Any, count: int, **kwargs: Any) -> list[tuple[float, str]]:
    """``count`` gRPC requests sent at once; (seconds from send to answer, error or "ok")."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    array = rel.frames(2, 360, 640)
    results: list[tuple[float, str]] = []
    done = threading.Event()
    lock = threading.Lock()

    def callback(sent: float) -> Any:
        def on_result(result: Any, error: Any) -> None:
            with lock:
                message = "ok" if error is None else f"{error.status()} {error.message()}"
                results.append((time.monotonic() - sent, message))
                if len(results) == count:
                    done.set()

        return on_result

    try:
        for _ in range(count):
            tensor = grpcclient.InferInput("FRAMES", list(array.shape), "UINT8")
            tensor.set_data_from_numpy(array)
            client.async_infer(rel.MODEL, [tensor], callback(time.monotonic()), **kwargs)
        assert done.wait(120), f"only {len(results)} of {count} answered in 120 s"
    finally:
        client.close()
    return results


def test_flood_gets_fast_clear_rejections_then_serves(small_queue_server, rel) -> None:
    results = _flood(small_queue_server, rel, 40)
    rejected = [(t, m) for t, m in results if "Exceeds maximum queue size" in m]
    served = [t for t, m in results if m == "ok"]
    assert len(rejected) + len(served) == len(results), {m for _, m in results}
    assert rejected and served
    assert all(m.startswith("StatusCode.UNAVAILABLE") for _, m in rejected)
    # Refused at once, not after waiting behind the queue (one request takes ~0.3 s here).
    assert max(t for t, _ in rejected) < 3.0, sorted(t for t, _ in rejected)
    assert rel.wait_until(lambda: not any(rel.pending_requests(small_queue_server).values()), 10)
    rel.assert_serves(small_queue_server, "grpc")
    rel.assert_serves(small_queue_server, "http")


def test_request_timeout_refuses_requests_that_wait_too_long(small_queue_server, rel) -> None:
    # The ensemble hands the request's timeout (microseconds) to every composing model.
    results = _flood(small_queue_server, rel, 6, timeout=1000)
    expired = [m for _, m in results if "Request timeout expired" in m]
    assert expired, [m for _, m in results]
    assert all(
        m == "ok" or "Request timeout expired" in m or "Exceeds maximum queue size" in m
        for _, m in results
    )
    rel.assert_serves(small_queue_server)


def test_client_deadline_and_cancellation_leave_nothing_behind(small_queue_server, rel) -> None:
    array = rel.frames(8, 720, 1280)  # ~2 s of work on this CPU
    grpc = grpcclient.InferenceServerClient(small_queue_server.grpc_url)
    try:
        # Deadline shorter than the work: the client gives up, the server finishes or drops it.
        with pytest.raises(InferenceServerException, match="Deadline"):
            rel.infer(grpc, array, client_timeout=0.02)
        # Cancel queued and in-flight requests.
        contexts = []
        for _ in range(4):
            tensor = grpcclient.InferInput("FRAMES", list(array.shape), "UINT8")
            tensor.set_data_from_numpy(array)
            contexts.append(grpc.async_infer(rel.MODEL, [tensor], lambda result, error: None))
        time.sleep(0.1)
        for context in contexts:
            context.cancel()
    finally:
        grpc.close()
    # Cancelled requests already executing finish first (the queue holds 2): let them drain,
    # or the next request is refused as "Exceeds maximum queue size" instead of timing out.
    assert rel.wait_until(lambda: not any(rel.pending_requests(small_queue_server).values()), 15)
    http = httpclient.InferenceServerClient(
        small_queue_server.http_url, connection_timeout=5, network_timeout=0.05
    )
    try:
        with pytest.raises(Exception, match=r"(?i)timed out|timeout"):
            rel.infer(http, array)
    finally:
        http.close()
    assert rel.wait_until(lambda: not any(rel.pending_requests(small_queue_server).values()), 15)
    rel.assert_serves(small_queue_server, "grpc")
    rel.assert_serves(small_queue_server, "http")
