"""The project's custom metrics on the real (embedded, CPU) Triton server's metrics endpoint.

A known set of requests goes through the ensemble (valid ones of 1, 2 and 3 frames, sent one
after the other so that no two are batched together, and requests the models reject), then the
endpoint is scraped and the exact increments asserted. The session server is shared with other
tests: everything is measured as the difference between a scrape before and one after.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bgblur.server.launcher import TritonServer
from bgblur.serving.metrics import (
    FAILURE_REASONS,
    REJECTION_REASONS,
    metric_names,
    parse_exposition,
)

pytestmark = pytest.mark.slow

STAGES = ("preprocess", "segmentation", "postprocess")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: TritonServer) -> Samples:
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as response:
        return parse_exposition(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def send(client: grpcclient.InferenceServerClient, frames: np.ndarray, **parameters: Any) -> None:
    tensor = grpcclient.InferInput("FRAMES", list(frames.shape), "UINT8")
    tensor.set_data_from_numpy(frames)
    client.infer(
        "background_blur",
        [tensor],
        outputs=[grpcclient.InferRequestedOutput("BLURRED")],
        parameters=parameters or None,
    )


VALID_BATCHES = (1, 2, 3)
# (frames, parameters, reason); each is rejected by preprocess, the ensemble's first step.
INVALID = (
    (np.zeros((2, 24, 32, 3), np.uint8), {"blur_sigma": -1.0}, "parameter"),
    (np.zeros((1, 24, 32, 3), np.uint8), {"blur_radius": 3}, "parameter"),
    (np.zeros((1, 0, 32, 3), np.uint8), {}, "frame_size"),
    (np.zeros((1, 1, 7681, 3), np.uint8), {}, "frame_size"),
)


@pytest.fixture(scope="module")
def traffic(triton_server: TritonServer) -> tuple[Samples, Samples]:
    """Scrapes before and after the known traffic."""
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    rng = np.random.default_rng(0)
    try:
        send(client, rng.integers(0, 256, (1, 24, 32, 3), dtype=np.uint8))  # models warm
        before = scrape(triton_server)
        for batch in VALID_BATCHES:
            send(client, rng.integers(0, 256, (batch, 48, 64, 3), dtype=np.uint8))
        for frames, parameters, _ in INVALID:
            with pytest.raises(InferenceServerException) as info:
                send(client, frames, **parameters)
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value.message()
    finally:
        client.close()
    # Triton's own statistics are updated when a request is released, possibly just after its
    # response reached the client: wait until they show the ensemble's count and preprocess's
    # (which also counts the frames of the requests it rejected).
    expected = {
        "background_blur": sum(VALID_BATCHES),
        "preprocess": sum(VALID_BATCHES) + sum(f.shape[0] for f, _, _ in INVALID),
    }
    deadline = time.monotonic() + 10
    while True:
        after = scrape(triton_server)
        counted = all(
            value(after, "nv_inference_count", model=model, version="1")
            - value(before, "nv_inference_count", model=model, version="1")
            >= count
            for model, count in expected.items()
        )
        if counted or time.monotonic() > deadline:
            return before, after


def delta(traffic: tuple[Samples, Samples], name: str, **labels: str) -> float:
    before, after = traffic
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_counts_the_frames_and_batches_sent(traffic, stage: str) -> None:
    labels = {"model": stage, "stage": stage}
    assert delta(traffic, "bgblur_frames_total", **labels) == sum(VALID_BATCHES)
    assert delta(traffic, "bgblur_batches_total", **labels) == len(VALID_BATCHES)
    # frames per batch: 1, 2 and 3 -> cumulative buckets le=1: 1, le=2: 2, le=3: 3
    for bound, count in (("1", 1), ("2", 2), ("3", 3), ("+Inf", 3)):
        assert delta(traffic, "bgblur_batch_frames_bucket", **labels, le=bound) == count
    assert delta(traffic, "bgblur_batch_frames_sum", **labels) == sum(VALID_BATCHES)
    assert delta(traffic, "bgblur_batch_frames_count", **labels) == len(VALID_BATCHES)
    # Triton's own count of the stage's inferences also counts the frames of requests the model
    # answered with an error (all rejected by preprocess): ours tells them apart
    rejected = sum(f.shape[0] for f, _, _ in INVALID) if stage == "preprocess" else 0
    assert delta(traffic, "nv_inference_count", model=stage, version="1") == (
        sum(VALID_BATCHES) + rejected
    )


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_reports_its_compute_time(traffic, stage: str) -> None:
    labels = {"model": stage, "stage": stage}
    compute_us = delta(traffic, "bgblur_compute_us_total", **labels)
    seconds_sum = delta(traffic, "bgblur_batch_compute_seconds_sum", **labels)
    assert compute_us > 0
    assert compute_us == pytest.approx(seconds_sum * 1e6, rel=1e-6)
    assert delta(traffic, "bgblur_batch_compute_seconds_count", **labels) == len(VALID_BATCHES)
    # the stage's compute is part of what Triton measures as the model's compute
    infer_us = delta(traffic, "nv_inference_compute_infer_duration_us", model=stage, version="1")
    assert compute_us <= infer_us


def test_rejections_are_counted_by_reason_where_they_happen(traffic) -> None:
    for reason in REJECTION_REASONS:
        sent = [f for f, _, r in INVALID if r == reason]
        labels = {"model": "preprocess", "stage": "preprocess", "reason": reason}
        assert delta(traffic, "bgblur_rejected_requests_total", **labels) == len(sent), reason
        assert delta(traffic, "bgblur_rejected_frames_total", **labels) == sum(
            f.shape[0] for f in sent
        ), reason
    # rejected at the first step: the later stages never saw them
    for stage in ("segmentation", "postprocess"):
        for reason in REJECTION_REASONS:
            labels = {"model": stage, "stage": stage, "reason": reason}
            assert delta(traffic, "bgblur_rejected_requests_total", **labels) == 0
    for stage in STAGES:
        for reason in FAILURE_REASONS:
            labels = {"model": stage, "stage": stage, "reason": reason}
            assert ("bgblur_failed_requests_total", frozenset(labels.items())) in traffic[1]
            assert delta(traffic, "bgblur_failed_requests_total", **labels) == 0


def test_every_exported_name_is_on_the_endpoint(traffic) -> None:
    _, after = traffic
    exported = {name for name, _ in after if name.startswith("bgblur_")}
    assert exported == metric_names()
    for name, labels in after:
        if name.startswith("bgblur_"):
            assert {"model", "stage"} <= dict(labels).keys(), (name, labels)
