"""``bench/video.py`` run for real on a tiny clip: a path that fails is recorded in the JSON as
an error row and the paths after it still run (a GPU run lost every row after one failure)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_failing_path_is_recorded_and_the_next_path_runs(tmp_path: Path) -> None:
    out = tmp_path / "video.json"
    # Nothing listens on port 9: the client path cannot reach a server; the seed's CPU
    # pipeline needs none.
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "video.py"),
            *("--size", "360p", "--frames", "4", "--streams", "1"),
            *("--paths", "client-pyav,cpu-baseline", "--url", "127.0.0.1:9"),
            *("--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    failed, baseline = json.loads(out.read_text())["rows"]
    assert failed["path"] == "client-pyav"
    assert failed["error"].startswith("ServerUnreachableError: cannot reach Triton at 127.0.0.1:9")
    assert "Traceback" in result.stderr  # the failure's trace is printed for the log
    assert baseline["path"] == "cpu-baseline"
    assert baseline["frames"] == 4 and baseline["frames_per_s"] > 0
