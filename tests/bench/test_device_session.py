"""bench/device_session.sh, the script the next GPU run depends on: it parses, every phase is
listed in its usage, and every bench/*.py option it passes exists (argparse ``--help``), so the
scarce GPU time is not lost to a renamed flag."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "device_session.sh"
PHASES = [
    "bundle",
    "tests-kernels",
    "tests-serving",
    "bench-e2e",
    "bench-video",
    "soak-start",
    "perf-levers",
]


def bench_invocations() -> list[tuple[str, list[str]]]:
    """``(script, [--option, ...])`` of every ``bench/X.py`` command in the script (line
    continuations joined)."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    found = []
    for match in re.finditer(r"bench/(\w+)\.py([^\n;&|]*)", text):
        found.append((match.group(1), re.findall(r"(?<![\w-])(--[a-z][\w-]*)", match.group(2))))
    return found


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_usage_names_every_phase() -> None:
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 2
    for phase in [*PHASES, "soak-collect"]:
        assert re.search(rf"^#.*\b{phase}\b", result.stdout, re.MULTILINE), phase
    assert "set -uo" not in result.stdout


def test_it_runs_the_benchmarks_it_should() -> None:
    scripts = {name for name, _ in bench_invocations()}
    assert {"e2e", "video", "soak", "ops"} <= scripts


@pytest.mark.parametrize("script", sorted({name for name, _ in bench_invocations()}))
def test_every_option_it_passes_exists(script: str) -> None:
    usage = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    options = {opt for name, opts in bench_invocations() if name == script for opt in opts}
    assert options, script
    missing = sorted(opt for opt in options if opt not in usage)
    assert not missing, f"bench/{script}.py has no {missing}"
