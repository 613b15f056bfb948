"""Per-stage split of a run from Triton's statistics extension (queue and compute per model).

    before = StatsSnapshot.take(client)
    ... send requests ...
    split = StatsSnapshot.take(client).since(before)
    split["postprocess"]["compute_infer_us_per_exec"]

``client`` is a ``tritonclient.grpc`` or ``tritonclient.http`` ``InferenceServerClient``. Triton
counts per model: successful requests, executions (batches the model ran), inferences (frames),
and cumulative nanoseconds in the queue, in input handling, in ``execute`` and in output
handling. The ensemble's own figures are the whole request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_DURATIONS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one model (Triton's ``ModelStatistics``)."""

    requests: int
    executions: int
    inferences: int
    success_ns: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int

    @classmethod
    def from_json(cls, stats: dict[str, Any]) -> ModelCounters:
        inference = stats.get("inference_stats", {})

        def field(name: str, key: str) -> int:
            return int(inference.get(name, {}).get(key, 0))

        return cls(
            requests=field("success", "count"),
            executions=int(stats.get("execution_count", 0)),
            inferences=int(stats.get("inference_count", 0)),
            success_ns=field("success", "ns"),
            queue_ns=field("queue", "ns"),
            compute_input_ns=field("compute_input", "ns"),
            compute_infer_ns=field("compute_infer", "ns"),
            compute_output_ns=field("compute_output", "ns"),
        )


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters of every loaded model at one moment."""

    models: dict[str, ModelCounters]

    @classmethod
    def take(cls, client: Any) -> StatsSnapshot:
        raw = client.get_inference_statistics(model_name="")
        if not isinstance(raw, dict):  # gRPC returns a protobuf unless as_json=True
            raw = client.get_inference_statistics(model_name="", as_json=True)
        models = {}
        for stats in raw.get("model_stats", []):
            counters = ModelCounters.from_json(stats)
            name = stats["name"]
            if name in models:  # several versions: add them up
                old = models[name]
                counters = ModelCounters(
                    *(
                        a + b
                        for a, b in zip(vars(old).values(), vars(counters).values(), strict=True)
                    )
                )
            models[name] = counters
        return cls(models)

    def since(self, before: StatsSnapshot) -> dict[str, dict[str, float]]:
        """Per model with activity in between: requests, executions, frames, mean frames per
        execution, and microseconds per request (queue, whole request) and per execution
        (compute input / infer / output)."""
        split: dict[str, dict[str, float]] = {}
        for name, now in self.models.items():
            then = before.models.get(name, ModelCounters(0, 0, 0, 0, 0, 0, 0, 0))
            requests = now.requests - then.requests
            if requests <= 0:
                continue
            executions = max(now.executions - then.executions, 1)
            frames = now.inferences - then.inferences
            row = {
                "requests": float(requests),
                "executions": float(now.executions - then.executions),
                "frames": float(frames),
                "frames_per_execution": frames / executions,
                "request_us": (now.success_ns - then.success_ns) / requests / 1e3,
                "queue_us_per_request": (now.queue_ns - then.queue_ns) / requests / 1e3,
            }
            for part in _DURATIONS[1:]:
                delta = getattr(now, f"{part}_ns") - getattr(then, f"{part}_ns")
                # Triton adds a batch's compute time once per request of the batch: per
                # request is the figure that adds up to request_us.
                row[f"{part}_us_per_request"] = delta / requests / 1e3
            split[name] = row
        return split
