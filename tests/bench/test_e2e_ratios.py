"""bench/e2e.py's seed comparison: latency ratio per transport at batch 1 / one client, and the
best served throughput over the CPU pipeline's best, at the baseline's frame size only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[2] / "bench" / "e2e.py"


def load_e2e():
    spec = importlib.util.spec_from_file_location("bench_e2e", E2E)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(size: str, transport: str, batch: int, concurrency: int, fps: float, p50: float) -> dict:
    return {
        "size": size,
        "transport": transport,
        "batch": batch,
        "concurrency": concurrency,
        "frames_per_s": fps,
        "latency_ms_p50": p50,
        "requests": 10,
    }


def test_ratios_against_the_cpu_pipeline() -> None:
    baseline = {
        "size": "1080p",
        "runs": [
            {"processes": 1, "frames_per_s": 10.0, "ms_per_frame_one_process": {"a": 60, "b": 32}},
            {"processes": 16, "frames_per_s": 98.0, "ms_per_frame_one_process": {"a": 1}},
        ],
    }
    served = [
        row("1080p", "grpc", 1, 1, 20.0, 46.0),
        row("1080p", "grpc+cuda-shm", 1, 1, 140.0, 4.6),
        row("1080p", "grpc+cuda-shm", 8, 8, 1960.0, 30.0),
        row("720p", "grpc+cuda-shm", 8, 8, 5000.0, 10.0),  # other size: ignored
    ]
    ratios = load_e2e().ratios_against(served, baseline)
    assert ratios["cpu_pipeline_ms_per_frame"] == 92
    assert ratios["cpu_pipeline_best_frames_per_s"] == 98.0
    assert ratios["latency_ratio_batch1_by_transport"] == {
        "grpc": pytest.approx(2.0),
        "grpc+cuda-shm": pytest.approx(20.0),
    }
    assert ratios["throughput_ratio_best"] == pytest.approx(20.0)
    assert ratios["best_served"] == {"transport": "grpc+cuda-shm", "batch": 8, "concurrency": 8}
