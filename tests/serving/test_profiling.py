"""bgblur.serving.profiling: cProfile around a model's execute calls, written to a folder."""

from __future__ import annotations

import pstats
import time
from pathlib import Path

import pytest

from bgblur.serving import profiling
from bgblur.serving.profiling import ExecuteProfiler, execute_profile


def busy_stage_work(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def test_writes_stats_and_summary_of_the_profiled_calls(tmp_path: Path) -> None:
    profiler = ExecuteProfiler(tmp_path, "postprocess", interval_s=0)
    for requests in (3, 5):
        with profiler.execute(requests):
            busy_stage_work(0.01)
    stats_file = tmp_path / f"postprocess.{profiler.stem.split('.')[1]}.pstats"
    summary = (tmp_path / f"{profiler.stem}.txt").read_text()
    assert stats_file.exists() and not list(tmp_path.glob("*.partial"))
    assert summary.startswith("2 execute calls, 8 requests, ")
    assert profiler.seconds >= 0.02 and profiler.calls == 2 and profiler.requests == 8
    functions = {name for (_, _, name) in pstats.Stats(str(stats_file)).stats}
    assert "busy_stage_work" in functions
    assert "busy_stage_work" in summary


def test_writes_at_most_once_per_interval(tmp_path: Path) -> None:
    profiler = ExecuteProfiler(tmp_path, "segmentation", interval_s=3600)
    with profiler.execute(1):
        busy_stage_work(0.001)
    assert not list(tmp_path.iterdir())
    profiler.write()
    assert (tmp_path / f"{profiler.stem}.txt").read_text().startswith("1 execute calls, 1 requests")


def test_off_without_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(profiling.PROFILE_DIR_ENV, raising=False)
    monkeypatch.setattr(profiling, "_PROFILERS", {})
    assert ExecuteProfiler.from_env("preprocess") is None
    with execute_profile("preprocess", 1):
        busy_stage_work(0.001)
    assert profiling._PROFILERS == {"preprocess": None}


def test_on_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(profiling.PROFILE_DIR_ENV, str(tmp_path / "prof"))
    monkeypatch.setenv(profiling.PROFILE_INTERVAL_ENV, "0")
    monkeypatch.setattr(profiling, "_PROFILERS", {})
    with execute_profile("preprocess", 2):
        busy_stage_work(0.001)
    (summary,) = (tmp_path / "prof").glob("preprocess.*.txt")
    assert summary.read_text().startswith("1 execute calls, 2 requests")
