"""bgblur.serving.metrics without Triton: the families and series it creates, what each call
records, the rejection reasons of the library's real validation errors, and the exposition
parser. (The real server's endpoint: tests/functional/test_metrics.py.)"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from bgblur.errors import InvalidInputError
from bgblur.parameters import BlurParams, validate_frames_shape
from bgblur.serving.metrics import (
    COMPUTE_SECONDS_BUCKETS,
    FAILURE_REASONS,
    FAMILIES,
    REJECTION_REASONS,
    StageMetrics,
    batch_frames_buckets,
    exposition_types,
    metric_names,
    parse_exposition,
    rejection_reason,
)


class FakeMetric:
    def __init__(self, kind: int, buckets: list[float] | None) -> None:
        self.kind = kind
        self.buckets = buckets
        self.value = 0.0
        self.observed: list[float] = []

    def increment(self, value: float) -> None:
        assert self.kind == FakeMetricFamily.COUNTER and value >= 0
        self.value += value

    def observe(self, value: float) -> None:
        assert self.kind == FakeMetricFamily.HISTOGRAM
        self.observed.append(value)


class FakeMetricFamily:
    """The shape of ``pb_utils.MetricFamily`` in Triton 2.51, with the stub's argument checks
    (buckets required for a histogram and refused otherwise)."""

    COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
    created: ClassVar[dict[str, FakeMetricFamily]] = {}

    def __init__(self, name: str, description: str, kind: int) -> None:
        assert name not in self.created, f"family {name} created twice"
        self.name, self.description, self.kind = name, description, kind
        self.metrics: dict[frozenset[tuple[str, str]], FakeMetric] = {}
        self.created[name] = self

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> FakeMetric:  # noqa: N802
        assert (buckets is not None) == (self.kind == self.HISTOGRAM), self.name
        assert buckets is None or buckets == sorted(buckets)
        key = frozenset(labels.items())
        assert key not in self.metrics
        self.metrics[key] = FakeMetric(self.kind, buckets)
        return self.metrics[key]


class FakePbUtils:
    MetricFamily = FakeMetricFamily


@pytest.fixture
def families() -> dict[str, FakeMetricFamily]:
    FakeMetricFamily.created = {}
    return FakeMetricFamily.created


def series(families: dict[str, FakeMetricFamily], name: str, **labels: str) -> FakeMetric:
    return families[name].metrics[frozenset(labels.items())]


STAGE = {"model": "preprocess"}


def stage_metrics(stage: str, model: str | None = None, max_batch_size: int = 8) -> StageMetrics:
    return StageMetrics(
        FakePbUtils, stage=stage, model=model or stage, max_batch_size=max_batch_size
    )


def test_creates_every_family_with_prefix_and_labels(families) -> None:
    stage_metrics("preprocess")
    assert set(families) == set(FAMILIES)
    for name, family in families.items():
        assert name.startswith("bgblur_")
        assert family.kind == getattr(FakeMetricFamily, FAMILIES[name][0])
        assert family.description
        for labels in family.metrics:
            assert dict(labels)["model"] == "preprocess"
            assert dict(labels).keys() <= {"model", "reason"}
    # rejection series exist from the start, one per reason
    for name in ("bgblur_rejected_requests_total", "bgblur_rejected_frames_total"):
        reasons = {dict(k)["reason"] for k in families[name].metrics}
        assert reasons == set(REJECTION_REASONS)
    failed = {dict(k)["reason"] for k in families["bgblur_failed_requests_total"].metrics}
    assert failed == set(FAILURE_REASONS) == {"error", "gpu_oom"}
    assert series(families, "bgblur_batch_frames", **STAGE).buckets == [1, 2, 4, 8]
    assert series(families, "bgblur_batch_compute_seconds", **STAGE).buckets == list(
        COMPUTE_SECONDS_BUCKETS
    )


@pytest.mark.parametrize(
    ("max_batch_size", "buckets"),
    [(8, (1, 2, 4, 8)), (6, (1, 2, 4, 6)), (16, (1, 2, 4, 8, 16)), (1, (1,)), (0, (1,))],
)
def test_batch_frames_buckets_end_at_the_batch_limit(max_batch_size: int, buckets) -> None:
    assert batch_frames_buckets(max_batch_size) == buckets


def test_metric_names_lists_histogram_series() -> None:
    names = metric_names()
    assert "bgblur_frames_total" in names
    assert {"bgblur_batch_frames_bucket", "bgblur_batch_frames_count"} <= names
    assert "bgblur_batch_frames" not in names


def test_batch_records_frames_time_and_histograms(families) -> None:
    metrics = stage_metrics("postprocess")
    metrics.batch(3, 0.002)
    metrics.batch(1, 0.5)
    labels = {"model": "postprocess"}
    assert series(families, "bgblur_frames_total", **labels).value == 4
    assert series(families, "bgblur_batch_compute_seconds", **labels).observed == [0.002, 0.5]
    assert series(families, "bgblur_batch_frames", **labels).observed == [3, 1]


def test_rejections_by_reason_and_failures(families) -> None:
    metrics = stage_metrics("preprocess")
    metrics.rejected(InvalidInputError("parameter 'blur_sigma' must be in (0, 100]"), 2)
    metrics.rejected(InvalidInputError("unknown parameter 'x'; known parameters: a"), 1)
    metrics.rejected(InvalidInputError("FRAMES must not be empty, got shape [1, 0, 4, 3]"), 1)
    metrics.rejected_batch(InvalidInputError("NETWORK_INPUT must be [batch, 3, 4, 4]"), [2, 3])
    metrics.failed(2)
    metrics.failed(3, "gpu_oom")
    metrics.failed(1, "no such reason")  # counted as an error, never raises

    def rejected(kind: str, reason: str) -> float:
        return series(families, f"bgblur_rejected_{kind}_total", **STAGE, reason=reason).value

    assert (rejected("requests", "parameter"), rejected("frames", "parameter")) == (2, 3)
    assert (rejected("requests", "frame_size"), rejected("frames", "frame_size")) == (1, 1)
    assert (rejected("requests", "tensor"), rejected("frames", "tensor")) == (2, 5)
    failed = "bgblur_failed_requests_total"
    assert series(families, failed, **STAGE, reason="error").value == 3
    assert series(families, failed, **STAGE, reason="gpu_oom").value == 3
    assert series(families, "bgblur_frames_total", **STAGE).value == 0


def raised_by(call: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        call()
    return info.value


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda: BlurParams().with_overrides({"blur_sigma": -1}), "parameter"),
        (lambda: BlurParams().with_overrides({"blur_sigma": "strong"}), "parameter"),
        (lambda: BlurParams().with_overrides({"blur_radius": 3}), "parameter"),
        (lambda: BlurParams().with_overrides({"soft_mask": "maybe"}), "parameter"),
        (lambda: validate_frames_shape((1, 0, 16, 3), "uint8"), "frame_size"),
        (lambda: validate_frames_shape((1, 1, 7681, 3), "uint8"), "frame_size"),
        (lambda: validate_frames_shape((8, 4320, 7680, 3), "uint8"), "frame_size"),
        (lambda: validate_frames_shape((9, 4320, 7680, 3), "uint8"), "frame_size"),
        (lambda: validate_frames_shape((1, 16, 16, 3), "float32"), "tensor"),
        (lambda: validate_frames_shape((16, 16, 3), "uint8"), "tensor"),
        (lambda: validate_frames_shape((1, 16, 16, 4), "uint8"), "tensor"),
    ],
)
def test_reason_of_the_librarys_own_validation_errors(call: Any, reason: str) -> None:
    assert rejection_reason(raised_by(call)) == reason


def test_an_explicit_reason_attribute_wins() -> None:
    exc = InvalidInputError("parameter 'x' is odd")
    exc.reason = "tensor"  # type: ignore[attr-defined]
    assert rejection_reason(exc) == "tensor"
    exc.reason = "not-a-class"  # type: ignore[attr-defined]
    assert rejection_reason(exc) == "parameter"


def test_recording_errors_never_reach_the_request(families, caplog) -> None:
    metrics = stage_metrics("segmentation")

    def broken(value: float) -> None:
        raise RuntimeError("stub gone")

    series(families, "bgblur_frames_total", model="segmentation").increment = broken
    metrics.batch(1, 0.1)
    metrics.batch(1, 0.1)
    assert sum("recording failed" in r.message for r in caplog.records) == 1


def test_for_model_is_none_without_the_api(families) -> None:
    class NoMetrics:
        pass

    args = {"model_name": "background_blur_direct", "model_config": '{"max_batch_size": 4}'}
    assert StageMetrics.for_model(NoMetrics, args, "direct") is None
    made = StageMetrics.for_model(FakePbUtils, args, "direct")
    assert made is not None and (made.model, made.stage) == ("background_blur_direct", "direct")
    assert made.batch_frames_buckets == (1, 2, 4)
    (labels,) = families["bgblur_batch_frames"].metrics
    assert dict(labels) == {"model": "background_blur_direct"}
    assert families["bgblur_batch_frames"].metrics[labels].buckets == [1, 2, 4]


def test_parse_exposition() -> None:
    text = (
        "# HELP bgblur_frames_total Frames\n"
        "# TYPE bgblur_frames_total counter\n"
        'bgblur_frames_total{model="preprocess"} 6\n'
        'bgblur_batch_frames_bucket{model="m",le="+Inf"} 3\n'
        'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.25\n'
        "nv_cpu_utilization 0.5\n"
        'x{a="with \\"quote\\", comma"} 1e3\n'
    )
    samples = parse_exposition(text)
    assert samples[("bgblur_frames_total", frozenset(STAGE.items()))] == 6
    bucket = frozenset({"model": "m", "le": "+Inf"}.items())
    assert samples[("bgblur_batch_frames_bucket", bucket)] == 3
    assert samples[("nv_cpu_utilization", frozenset())] == 0.5
    assert samples[("x", frozenset({("a", 'with \\"quote\\", comma')}))] == 1000
    assert exposition_types(text) == {"bgblur_frames_total": "counter"}
    with pytest.raises(ValueError):
        parse_exposition("not a sample line with spaces")
