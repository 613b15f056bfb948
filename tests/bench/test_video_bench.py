"""``bench/video.py`` run for real on a tiny clip: a path that fails is recorded in the JSON as
an error row and the paths after it still run (a GPU run lost every row after one failure); the
temporary folder of a run (the generated clip, the outputs) is gone when it ends, and nothing is
written beside a clip given with ``--clip``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str, temp_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``bench/video.py args`` in a child process (its exit, stdout and stderr), with its
    temporary files under ``temp_dir`` when given (``$TMPDIR``)."""
    env = None
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(temp_dir)}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "video.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )


def test_a_failing_path_is_recorded_and_the_next_path_runs(tmp_path: Path) -> None:
    out = tmp_path / "video.json"
    temp = tmp_path / "tmp"
    # Nothing listens on port 9: the client path cannot reach a server; the reference CPU
    # pipeline needs none.
    result = run_bench(
        *("--size", "360p", "--frames", "4", "--streams", "1"),
        *("--paths", "client-pyav,cpu-baseline", "--url", "127.0.0.1:9"),
        *("--out", str(out)),
        temp_dir=temp,
    )

    assert result.returncode == 0, result.stderr
    # the generated clip, the baseline's output: all in the run's temporary folder, removed
    assert "clip-360p.mp4" in json.loads(out.read_text())["clip"]
    assert list(temp.iterdir()) == []
    failed, baseline = json.loads(out.read_text())["rows"]
    assert failed["path"] == "client-pyav"
    assert failed["error"].startswith("ServerUnreachableError: cannot reach Triton at 127.0.0.1:9")
    assert "Traceback" in result.stderr  # the failure's trace is printed for the log
    assert baseline["path"] == "cpu-baseline"
    assert baseline["frames"] == 4 and baseline["frames_per_s"] > 0


def test_the_client_paths_can_call_the_one_hop_model(tmp_path: Path) -> None:
    """``--client-model background_blur_direct``: the embedded server serves the one-hop model
    too, the decode + blur path calls it, and the row says which model answered."""
    out = tmp_path / "video.json"
    result = run_bench(
        *("--size", "360p", "--frames", "6", "--streams", "1", "--batch", "4"),
        *("--paths", "decode-pyav", "--client-model", "background_blur_direct"),
        *("--no-warmup", "--out", str(out)),
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["client_model"] == "background_blur_direct"
    (row,) = report["rows"]
    assert "error" not in row, row
    assert row["client_model"] == "background_blur_direct"
    assert row["frames"] == 6 and row["frames_per_s"] > 0


def test_rows_of_another_client_model_are_kept_when_merged() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_video", ROOT / "bench" / "video.py")
    assert spec is not None and spec.loader is not None
    bench_video = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_video)
    ensemble = {"path": "decode-nvdec", "streams": 16, "frames_per_s": 600.0}
    direct_old = ensemble | {"client_model": "background_blur_direct", "frames_per_s": 700.0}
    direct_new = direct_old | {"frames_per_s": 900.0}

    merged = bench_video.merged_rows([ensemble, direct_old], [direct_new])

    assert merged == [ensemble, direct_new]


def test_the_chunked_server_path_streams_the_whole_file(tmp_path: Path) -> None:
    """``server-chunked``: the clip (the user's, ``--clip``) remuxed to fragmented MP4 and sent
    in chunks; every frame comes back. The remuxed copy and the outputs live in the run's
    temporary folder: nothing is left beside the clip, or in the temporary folder."""
    from bgblur_client.samples import make_sample_video

    clips = tmp_path / "clips"
    clips.mkdir()
    clip = make_sample_video(clips / "mine.mp4", width=640, height=360, seconds=6 / 30, fps=30)
    out = tmp_path / "video.json"
    temp = tmp_path / "tmp"
    result = run_bench(
        *("--clip", str(clip), "--streams", "1", "--batch", "4"),
        *("--paths", "server-chunked", "--no-warmup", "--out", str(out)),
        temp_dir=temp,
    )

    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert "error" not in row, row
    assert row["frames"] == 6 and row["frames_per_s"] > 0
    assert sorted(p.name for p in clips.iterdir()) == ["mine.mp4"]
    assert [p.name for p in temp.iterdir() if p.name.startswith("bgblur-bench-video-")] == []
