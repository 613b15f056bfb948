"""The project's custom metrics on the real (embedded, CPU) Triton server's metrics endpoint.

A known set of requests goes through the ensemble (valid ones of 1, 2 and 3 frames, sent one
after the other so that no two are batched together, and requests the models reject), then the
endpoint is scraped and the exact increments asserted. The session server is shared with other
tests: everything is measured as the difference between a scrape before and one after. The
names and labels on the endpoint follow Prometheus' naming conventions (checked on the scrape).
"""

from __future__ import annotations

import itertools
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bgblur.server.launcher import TritonServer
from bgblur.serving.metrics import (
    FAILURE_REASONS,
    REJECTION_REASONS,
    batch_frames_buckets,
    exposition_types,
    metric_names,
    parse_exposition,
)

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
STAGES = ("preprocess", "segmentation", "postprocess")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(server: TritonServer) -> str:
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as response:
        return response.read().decode()


def scrape(server: TritonServer) -> Samples:
    return parse_exposition(scrape_text(server))


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
    """Scrapes before and after the known traffic, sent to Triton's own gRPC port: the gRPC
    guard in front of it refuses some invalid requests itself (frame sizes), and these tests
    count what the models see."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton_server.triton_grpc_port}")
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
    labels = {"model": stage}
    assert delta(traffic, "bgblur_frames_total", **labels) == sum(VALID_BATCHES)
    # frames per batch: 1, 2 and 3 -> cumulative buckets le=1: 1, le=2: 2, le=4: 3, le=8: 3
    for bound, count in (("1", 1), ("2", 2), ("4", 3), ("8", 3), ("+Inf", 3)):
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
    labels = {"model": stage}
    compute_seconds = delta(traffic, "bgblur_batch_compute_seconds_sum", **labels)
    assert compute_seconds > 0
    assert delta(traffic, "bgblur_batch_compute_seconds_count", **labels) == len(VALID_BATCHES)
    # the stage's compute is part of what Triton measures as the model's compute
    infer_us = delta(traffic, "nv_inference_compute_infer_duration_us", model=stage, version="1")
    assert compute_seconds * 1e6 <= infer_us


def test_rejections_are_counted_by_reason_where_they_happen(traffic) -> None:
    for reason in REJECTION_REASONS:
        sent = [f for f, _, r in INVALID if r == reason]
        labels = {"model": "preprocess", "reason": reason}
        assert delta(traffic, "bgblur_rejected_requests_total", **labels) == len(sent), reason
        assert delta(traffic, "bgblur_rejected_frames_total", **labels) == sum(
            f.shape[0] for f in sent
        ), reason
    # rejected at the first step: the later stages never saw them
    for stage in ("segmentation", "postprocess"):
        for reason in REJECTION_REASONS:
            labels = {"model": stage, "reason": reason}
            assert delta(traffic, "bgblur_rejected_requests_total", **labels) == 0
    for stage in STAGES:
        for reason in FAILURE_REASONS:
            labels = {"model": stage, "reason": reason}
            assert ("bgblur_failed_requests_total", frozenset(labels.items())) in traffic[1]
            assert delta(traffic, "bgblur_failed_requests_total", **labels) == 0


def test_every_exported_name_is_on_the_endpoint(traffic) -> None:
    _, after = traffic
    exported = {name for name, _ in after if name.startswith("bgblur_")}
    assert exported == metric_names()
    for name, labels in after:
        if name.startswith("bgblur_"):
            assert "model" in dict(labels), (name, labels)


# --------------------------------------------------------------------------------------------
# Prometheus naming (https://prometheus.io/docs/practices/naming/)
# --------------------------------------------------------------------------------------------

#: Words of a metric name that give a unit other than the base one (seconds, bytes, ratios).
NON_BASE_UNITS = {
    *("ns", "us", "ms", "nanoseconds", "microseconds", "milliseconds", "minutes", "hours", "days"),
    *("kb", "mb", "gb", "kib", "mib", "gib", "kilobytes", "megabytes", "gigabytes"),
    "percent",
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def naming_problems(text: str, prefix: str = "bgblur_") -> list[str]:
    """What breaks Prometheus' naming conventions among the families of ``prefix`` in a text
    exposition: a unit other than the base one, a counter without ``_total`` (or another kind
    with it), a label that always equals another one or is a renaming of it (one value of each
    for every value of the other)."""
    types = {name: kind for name, kind in exposition_types(text).items() if name.startswith(prefix)}
    problems = []
    for name, kind in types.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            problems.append(f"{name}: not snake_case")
        units = set(name.split("_")) & NON_BASE_UNITS
        if units:
            problems.append(f"{name}: unit {sorted(units)} is not a base unit (seconds, bytes)")
        if (kind == "counter") != name.endswith("_total"):
            problems.append(
                f"{name}: a {kind} " + ("without" if kind == "counter" else "with") + " _total"
            )
    series: dict[str, list[dict[str, str]]] = {}
    for name, labels in parse_exposition(text):
        family = name
        for suffix in HISTOGRAM_SERIES:
            if name.endswith(suffix) and types.get(name.removesuffix(suffix)) == "histogram":
                family = name.removesuffix(suffix)
        if family in types:
            series.setdefault(family, []).append(dict(labels))
    for family, label_sets in series.items():
        keys = sorted(set().union(*label_sets) - {"le"})  # le: the histogram's own
        for a, b in itertools.combinations(keys, 2):
            pairs = {(labels.get(a), labels.get(b)) for labels in label_sets}
            if all(x == y for x, y in pairs):
                problems.append(f"{family}: label {a} always equals label {b}")
            elif len(pairs) > 1 and len(pairs) == len({x for x, _ in pairs}) == len(
                {y for _, y in pairs}
            ):
                problems.append(f"{family}: labels {a} and {b} name the same thing")
    return problems


def test_the_naming_check_finds_what_it_looks_for() -> None:
    text = (
        "# TYPE bgblur_compute_us_total counter\n"
        'bgblur_compute_us_total{model="preprocess",stage="preprocess"} 1\n'
        'bgblur_compute_us_total{model="postprocess",stage="postprocess"} 1\n'
        "# TYPE bgblur_batches counter\n"
        'bgblur_batches{model="preprocess",stage="pre"} 1\n'
        'bgblur_batches{model="postprocess",stage="post"} 1\n'
        "# TYPE bgblur_queue_total gauge\n"
        'bgblur_queue_total{model="preprocess"} 1\n'
        "# TYPE bgblur_batch_frames histogram\n"
        'bgblur_batch_frames_bucket{model="preprocess",le="1"} 1\n'
        'bgblur_batch_frames_bucket{model="preprocess",le="+Inf"} 1\n'
        'bgblur_batch_frames_count{model="preprocess"} 1\n'
        "# TYPE nv_inference_queue_duration_us counter\n"
        'nv_inference_queue_duration_us{model="preprocess",version="1"} 1\n'
    )
    assert sorted(naming_problems(text)) == [
        "bgblur_batches: a counter without _total",
        "bgblur_batches: labels model and stage name the same thing",
        "bgblur_compute_us_total: label model always equals label stage",
        "bgblur_compute_us_total: unit ['us'] is not a base unit (seconds, bytes)",
        "bgblur_queue_total: a gauge with _total",
    ]


def test_the_endpoint_s_bgblur_metrics_follow_prometheus_naming(traffic, triton_server) -> None:
    text = scrape_text(triton_server)
    assert {n for n in exposition_types(text) if n.startswith("bgblur_")} >= {
        "bgblur_frames_total",
        "bgblur_batch_compute_seconds",
        "bgblur_batch_frames",
    }
    assert naming_problems(text) == []


def max_batch_size(model: str) -> int:
    config = (REPOSITORY / model / "config.pbtxt").read_text()
    return int(re.search(r"^max_batch_size:\s*(\d+)", config, re.MULTILINE).group(1))


@pytest.mark.parametrize("stage", STAGES)
def test_batch_size_buckets_end_at_the_model_s_batch_limit(traffic, stage: str) -> None:
    _, after = traffic
    bounds = {
        dict(labels)["le"]
        for name, labels in after
        if name == "bgblur_batch_frames_bucket" and dict(labels)["model"] == stage
    }
    assert "+Inf" in bounds
    finite = sorted(float(b) for b in bounds - {"+Inf"})
    assert finite == [1, 2, 4, 8] == list(batch_frames_buckets(max_batch_size(stage)))
