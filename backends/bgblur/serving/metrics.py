"""The project's own per-model Prometheus metrics, exported from the Python-backend models.

Triton's Python backend has a custom metrics API (``pb_utils.MetricFamily``, Triton 2.51 =
release 24.10: kinds COUNTER, GAUGE and HISTOGRAM); what a model records there appears on the
server's metrics endpoint (``:8002/metrics``) next to Triton's own ``nv_*`` metrics. Triton's
per-model figures count requests and executions as Triton sees them; these add what only the
model knows: frames per stage, the compute of each batch the model actually ran (requests are
grouped by frame size and options, so one Triton execution may run several batches), and
requests rejected by the model's own validation, by reason.

Names follow Prometheus' conventions: base units (seconds), counters end in ``_total``, and one
label per dimension. Every series has the label ``model`` (the Triton model, as in Triton's own
``nv_*`` series, so the two join on it; each model runs one stage, so a stage label would repeat
it); the rejection counters also ``reason`` (one of ``REJECTION_REASONS``), the failure counter
``reason`` (one of ``FAILURE_REASONS``):

==================================  =========  ==================================================
name                                kind       what
==================================  =========  ==================================================
``bgblur_frames_total``             counter    frames the model processed and answered
``bgblur_batch_compute_seconds``    histogram  seconds computing one batch (one ``run`` call):
                                               the stage's work plus the hand-off of its outputs
                                               (on the GPU that includes the one stream
                                               synchronization); ``_sum`` is the total compute
                                               time, ``_count`` the number of batches
``bgblur_batch_frames``             histogram  frames per batch; buckets 1, 2, 4, ... up to the
                                               model's ``max_batch_size`` (``_sum`` equals
                                               ``bgblur_frames_total``)
``bgblur_rejected_requests_total``  counter    requests answered INVALID_ARG by the model
``bgblur_rejected_frames_total``    counter    frames in those requests
``bgblur_failed_requests_total``    counter    requests the model failed: ``reason="error"``
                                               answered INTERNAL (a batch that raised),
                                               ``reason="gpu_oom"`` answered UNAVAILABLE (the GPU
                                               ran out of memory; retryable)
==================================  =========  ==================================================

Triton's own per-model metrics do not tell rejections apart (observed with the embedded 2.51): a
request that a Python model answers with an error counts there as a success of that model (and in
``nv_inference_count``), and as a failure (reason ``OTHER``, twice) of the ensemble. Requests
that Triton itself refuses (wrong dtype, rank, tensor name, batch too large) reach no model and
appear in no per-model metric.

``pb_utils`` exists only inside Triton's stub, so it is passed in (as in ``triton_io``): the
module stays importable and testable without Triton. Each metric operation is a message from the
stub to the server process (a few microseconds: docs/benchmarks.md); a batch costs three of
them, a rejected request two. Metrics never fail a request: an error while recording is logged
once and recording goes on.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

LOG = logging.getLogger("bgblur.serving.metrics")

PREFIX = "bgblur_"

#: Reason classes of ``bgblur_rejected_*_total``: a request parameter (unknown, malformed, out of
#: range), a frame size (empty, or beyond the size or byte limits), or another tensor problem
#: (dtype, shape, channels, missing tensor, batch mismatch between tensors).
REJECTION_REASONS = ("parameter", "frame_size", "tensor")

#: Reason classes of ``bgblur_failed_requests_total``: an unexpected error (answered INTERNAL), or
#: the GPU out of memory (answered UNAVAILABLE: the client may retry; ``triton_io``).
FAILURE_REASONS = ("error", "gpu_oom")

#: Bucket upper bounds of ``bgblur_batch_compute_seconds``: 50 us (a GPU kernel launch) to 10 s
#: (a batch of 4K frames on two CPU cores).
COMPUTE_SECONDS_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: ``{name: (kind, description)}`` of every metric family this module creates; kinds are the
#: attribute names of ``pb_utils.MetricFamily``.
FAMILIES: dict[str, tuple[str, str]] = {
    "bgblur_frames_total": ("COUNTER", "Frames processed and answered, per model"),
    "bgblur_batch_compute_seconds": (
        "HISTOGRAM",
        "Seconds computing one batch (stage work + output hand-off), per model",
    ),
    "bgblur_batch_frames": ("HISTOGRAM", "Frames per batch run, per model"),
    "bgblur_rejected_requests_total": (
        "COUNTER",
        "Requests rejected (INVALID_ARG) by the model's validation, by reason",
    ),
    "bgblur_rejected_frames_total": (
        "COUNTER",
        "Frames in requests rejected by the model's validation, by reason",
    ),
    "bgblur_failed_requests_total": (
        "COUNTER",
        "Requests failed by the model, by reason (error: INTERNAL, "
        "gpu_oom: GPU out of memory, UNAVAILABLE)",
    ),
}


def metric_names() -> set[str]:
    """Every series name the models export (histograms as ``_bucket``, ``_sum``, ``_count``)."""
    names: set[str] = set()
    for name, (kind, _) in FAMILIES.items():
        if kind == "HISTOGRAM":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def batch_frames_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Bucket upper bounds of ``bgblur_batch_frames`` for a model's ``max_batch_size``: the
    powers of two below it, then the limit itself (8 -> 1, 2, 4, 8; 6 -> 1, 2, 4, 6). Triton's
    dynamic batcher never gives one execution more frames than ``max_batch_size``, so no batch
    the model runs is larger; a model without batching (0) gets the one bucket 1."""
    limit = max(int(max_batch_size), 1)
    bounds: list[float] = []
    size = 1
    while size < limit:
        bounds.append(float(size))
        size *= 2
    return (*bounds, float(limit))


def rejection_reason(exc: BaseException) -> str:
    """The reason class (``REJECTION_REASONS``) of a validation error.

    An exception's own ``reason`` attribute wins when it names a class; otherwise the class is
    read from the message, which ``bgblur.parameters`` and the adapters word consistently
    (``parameter 'x' ...``/``unknown parameter``, ``must not be empty``/``exceeds``).
    """
    reason = getattr(exc, "reason", None)
    if reason in REJECTION_REASONS:
        return str(reason)
    message = str(exc)
    if message.startswith(("parameter ", "unknown parameter ")):
        return "parameter"
    if "must not be empty" in message or "exceeds" in message:
        return "frame_size"
    return "tensor"


class StageMetrics:
    """The metrics of one model instance, created at ``initialize``.

    Args:
        pb_utils: ``triton_python_backend_utils`` (or anything with its ``MetricFamily`` API).
        stage: what the model runs (``preprocess``, ``segmentation``, ``postprocess``,
            ``direct``), named in log messages.
        model: the Triton model's name (``args["model_name"]``): the ``model`` label.
        max_batch_size: the model's ``max_batch_size`` (config.pbtxt): the largest bucket of
            ``bgblur_batch_frames``.

    Instances of one model on several GPUs share the series (same labels): Triton adds them up.
    """

    def __init__(self, pb_utils: Any, *, stage: str, model: str, max_batch_size: int) -> None:
        self.stage = stage
        self.model = model
        self.batch_frames_buckets = batch_frames_buckets(max_batch_size)
        labels = {"model": model}
        # The families must outlive their metrics (the stub refuses to use a metric whose family
        # was deleted): keep both.
        self._families = {
            name: pb_utils.MetricFamily(
                name=name, description=description, kind=getattr(pb_utils.MetricFamily, kind)
            )
            for name, (kind, description) in FAMILIES.items()
        }
        family = self._families
        self._frames = family["bgblur_frames_total"].Metric(labels=labels)
        self._compute_hist = family["bgblur_batch_compute_seconds"].Metric(
            labels=labels, buckets=list(COMPUTE_SECONDS_BUCKETS)
        )
        self._frames_hist = family["bgblur_batch_frames"].Metric(
            labels=labels, buckets=list(self.batch_frames_buckets)
        )
        # One series per reason from the start: a counter that exists at 0 makes rate() and the
        # dashboard's panels work before the first rejection.
        self._rejected_requests = {
            reason: family["bgblur_rejected_requests_total"].Metric(
                labels={**labels, "reason": reason}
            )
            for reason in REJECTION_REASONS
        }
        self._rejected_frames = {
            reason: family["bgblur_rejected_frames_total"].Metric(
                labels={**labels, "reason": reason}
            )
            for reason in REJECTION_REASONS
        }
        self._failed = {
            reason: family["bgblur_failed_requests_total"].Metric(
                labels={**labels, "reason": reason}
            )
            for reason in FAILURE_REASONS
        }
        self._warned = False

    @classmethod
    def for_model(cls, pb_utils: Any, args: dict, stage: str) -> StageMetrics | None:
        """The metrics for the model ``initialize(args)`` describes (its name and, from
        ``args["model_config"]``, its ``max_batch_size``).

        ``None`` (logged) where they cannot be created (a Triton without the custom metrics
        API, before 23.05): serving goes on without them."""
        try:
            config = json.loads(args["model_config"])
            return cls(
                pb_utils,
                stage=stage,
                model=args["model_name"],
                max_batch_size=int(config.get("max_batch_size", 0)),
            )
        except Exception as exc:  # metrics are optional: serving goes on without them
            LOG.warning("bgblur metrics disabled for %s: %s", stage, exc)
            return None

    def batch(self, frames: int, seconds: float) -> None:
        """A batch of ``frames`` computed in ``seconds`` and answered."""
        self._safely(
            (self._frames, frames),
            observe=((self._compute_hist, seconds), (self._frames_hist, frames)),
        )

    def rejected(self, exc: BaseException, frames: int) -> None:
        """A request of ``frames`` frames rejected by validation with ``exc``."""
        reason = rejection_reason(exc)
        self._safely(
            (self._rejected_requests[reason], 1),
            (self._rejected_frames[reason], frames),
        )

    def rejected_batch(self, exc: BaseException, frame_counts: Sequence[int]) -> None:
        """Every request of a batch rejected together (validation failed while running it)."""
        reason = rejection_reason(exc)
        self._safely(
            (self._rejected_requests[reason], len(frame_counts)),
            (self._rejected_frames[reason], sum(frame_counts)),
        )

    def failed(self, requests: int, reason: str = "error") -> None:
        """``requests`` answered with an error of class ``reason`` (``FAILURE_REASONS``:
        ``"error"`` INTERNAL, ``"gpu_oom"`` UNAVAILABLE)."""
        self._safely((self._failed[reason if reason in self._failed else "error"], requests))

    def _safely(
        self,
        *increments: tuple[Any, float],
        observe: Sequence[tuple[Any, float]] = (),
    ) -> None:
        """``metric.increment(value)`` for each pair (skipped for 0: no message to the server),
        then ``metric.observe(value)`` for each pair of ``observe``."""
        try:
            for metric, value in increments:
                if value:
                    metric.increment(float(value))
            for metric, value in observe:
                metric.observe(float(value))
        except Exception:
            if not self._warned:
                self._warned = True
                LOG.exception("bgblur metrics: recording failed for %s", self.stage)


_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$"
)
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
_TYPE = re.compile(r"^#\s*TYPE\s+(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\s+(?P<kind>\w+)\s*$")


def exposition_types(text: str) -> dict[str, str]:
    """``{family: kind}`` from the ``# TYPE`` lines of a Prometheus text exposition (kinds as
    written there: ``counter``, ``gauge``, ``histogram``, ``summary``, ``untyped``)."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        match = _TYPE.match(line.strip())
        if match is not None:
            types[match.group("name")] = match.group("kind")
    return types


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of a Prometheus text exposition (``/metrics``): ``{(name, labels): value}``.

    Enough for Triton's endpoint (no timestamps, no exemplars); comments are skipped.
    """
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a Prometheus sample: {line!r}")
        labels = frozenset(
            (m.group("key"), m.group("value")) for m in _LABEL.finditer(match.group("labels") or "")
        )
        samples[(match.group("name"), labels)] = float(match.group("value"))
    return samples
