"""The ``perf-levers`` phase of bench/device_session.sh and the bench/e2e.py options it uses,
run here with stand-ins for the GPU host's tools: a ``python`` that records each bench/e2e.py
command and writes a result file as e2e.py does, and a ``timeout`` that records each limit. The
phase's own summary script runs on those files with the real interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "device_session.sh"
sys.path.insert(0, str(ROOT / "bench"))
import e2e  # noqa: E402

STAND_IN_PYTHON = """#!/bin/sh
case "$1" in
  -c) case "$2" in *getsitepackages*) echo "$STAND_IN_SITE";; *) echo h100;; esac; exit 0;;
  -) exec {python} "$@";;
esac
echo "$*" >> "$STAND_IN_LOG"
exec {python} - "$@" <<'PYEOF'
import json, sys
args = sys.argv[1:]
out = args[args.index("--out") + 1]
fps = 2000.0 if "--segmentation-batch" in args else 1000.0
rows = [
    {{"batch": 8, "concurrency": 16, "frames_per_s": fps, "latency_ms_p50": 60.0,
      "stages": {{"segmentation": {{"frames_per_execution": 24.0}}}}}},
    {{"batch": 1, "concurrency": 1, "frames_per_s": 150.0, "latency_ms_p50": 6.5, "stages": {{}}}},
]
open(out, "w").write(json.dumps({{"served": rows}}))
PYEOF
"""

STAND_IN_TIMEOUT = """#!/bin/sh
echo "$3" >> "$STAND_IN_LIMITS"
shift 3
exec "$@"
"""


@pytest.fixture(scope="module")
def phase(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("levers")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, text in {
        "python": STAND_IN_PYTHON.format(python=sys.executable),
        "timeout": STAND_IN_TIMEOUT,
    }.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp / "site").mkdir()
    out = tmp / "out"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": str(bin_dir / "python"),
        "OUT": str(out),
        "STAND_IN_SITE": str(tmp / "site"),
        "STAND_IN_LOG": str(tmp / "commands.log"),
        "STAND_IN_LIMITS": str(tmp / "limits.log"),
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), "perf-levers"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    commands = [line.split() for line in (tmp / "commands.log").read_text().splitlines()]
    limits = [int(x) for x in (tmp / "limits.log").read_text().split()]
    return {"out": out, "commands": commands, "limits": limits, "tmp": tmp}


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_it_measures_every_variant_of_both_ensembles_and_the_one_hop_model(phase: dict) -> None:
    commands = phase["commands"]
    assert all(c[0] == "bench/e2e.py" for c in commands)
    seen = {
        (
            option(c, "--model") or "selfie_general",
            option(c, "--served-model") or "background_blur",
            option(c, "--segmentation-batch"),
            "--mps" in c,
        )
        for c in commands
    }
    expected = {
        (m, "background_blur", batch, mps)
        for m in ("fcn_resnet101", "selfie_general")
        for batch in (None, "64")
        for mps in (False, True)
    }
    assert seen == expected | {("selfie_general", "background_blur_direct", None, False)}
    for c in commands:  # the rows that decide, on the same transport as the headline figures
        assert option(c, "--pairs") == "8x16,1x1" and option(c, "--seconds") == "3"
        assert option(c, "--sizes") == "1080p" and option(c, "--shared-memory") == "cuda"
        assert option(c, "--device") == "gpu"


def test_it_fits_one_command_of_the_gpu_host(phase: dict) -> None:
    assert len(phase["limits"]) == 9
    assert sum(phase["limits"]) <= 560


def test_one_json_per_variant_and_a_summary(phase: dict) -> None:
    out = phase["out"]
    names = sorted(p.name for p in out.glob("levers-*.json"))
    if not names:  # more than 8 files travel as one tarball (pack_out)
        (tarball,) = out.glob("*.tar.gz")
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(out)], check=True)
        names = sorted(p.name for p in out.glob("levers-*.json"))
    assert len(names) == 9 and len(set(names)) == 9
    assert "levers-h100-" in names[0]
    summary = (out / "levers-summary.txt").read_text().splitlines()
    assert summary[0].split()[:3] == ["file", "8x16", "frames/s"]
    rows = {line.split()[0]: line.split()[1:] for line in summary[1:]}
    seg64 = next(k for k in rows if k.endswith("fcn_resnet101-seg64"))
    base = next(k for k in rows if k.endswith("fcn_resnet101-baseline"))
    assert rows[seg64] == ["2000", "24.0", "6.50"] and rows[base][0] == "1000"


@pytest.mark.parametrize(
    ("args", "plan"),
    [
        (
            ("1,8", "1,16", "cuda", ""),
            [(1, "cuda", 1), (1, "cuda", 16), (8, "cuda", 1), (8, "cuda", 16)],
        ),
        (
            ("1,8", "1,16", "none,cuda", "8x16,1x1"),
            [(8, "none", 16), (8, "cuda", 16), (1, "none", 1), (1, "cuda", 1)],
        ),
    ],
)
def test_served_plan(args: tuple[str, str, str, str], plan: list) -> None:
    assert e2e.served_plan(*args) == plan


@pytest.mark.parametrize("pairs", ["8", "8x", "x16", "8*16", "8x16,a"])
def test_served_plan_refuses_a_bad_pair(pairs: str) -> None:
    with pytest.raises(ValueError, match="--pairs takes BATCHxCLIENTS"):
        e2e.served_plan("1", "1", "cuda", pairs)


def test_e2e_takes_the_server_levers() -> None:
    usage = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "e2e.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    for flag in ("--segmentation-batch", "--segmentation-queue-delay-us", "--mps", "--pairs"):
        assert flag in usage, flag
    assert json.dumps  # the module's results are JSON (see the summary test)
