"""NVTX ranges: named ``<stage>.<op>`` after the stages' metric labels, opened where the
stages run, harmless without CUDA."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from bgblur.stages import nvtx
from bgblur.stages.nvtx import RANGES, nvtx_range

REPO = Path(__file__).resolve().parents[2]
STAGES = (
    "preprocess",
    "segmentation",
    "temporal_smoothing",
    "postprocess",
)  # the metrics' ``model`` labels


def test_every_range_is_named_after_a_stage() -> None:
    for name in RANGES:
        stage, _, op = name.partition(".")
        assert stage in STAGES and re.fullmatch(r"[a-z_]+", op), name
    for stage in STAGES:  # each stage's model is in the repository under that name
        assert (REPO / "model_repository" / stage / "config.pbtxt").is_file()


def opened_ranges(path: Path) -> list[tuple[int, str | None]]:
    """``(line, name)`` of every ``nvtx_range(...)`` call in ``path`` (name None where the
    argument is not one string literal: a name that cannot be checked)."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        called = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
        if called != "nvtx_range":
            continue
        literal = (
            len(node.args) == 1
            and not node.keywords
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        )
        calls.append((node.lineno, node.args[0].value if literal else None))
    return calls


def test_every_range_is_opened_somewhere_and_only_those() -> None:
    sources = [
        *REPO.glob("backends/bgblur/**/*.py"),
        *REPO.glob("model_repository/*/1/*.py"),
        *REPO.glob("bench/**/*.py"),
    ]
    opened: dict[str, list[str]] = {}
    for path in sources:
        for line, name in opened_ranges(path):
            where = f"{path.relative_to(REPO)}:{line}"
            assert name is not None, f"{where}: nvtx_range takes one string literal"
            opened.setdefault(name, []).append(where)
    unknown = {name: where for name, where in opened.items() if name not in RANGES}
    assert not unknown, f"ranges missing from RANGES: {unknown}"
    assert set(opened) == set(RANGES), f"never opened: {set(RANGES) - set(opened)}"


def test_without_nvtx_a_range_runs_its_body_and_passes_exceptions_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nvtx, "_NVTX", None)
    runs = []

    with nvtx_range("postprocess.fused"), nvtx_range("postprocess.mask"):
        runs.append("body")
    failure = RuntimeError("the stage failed")
    with pytest.raises(RuntimeError) as raised, nvtx_range("segmentation.network"):
        raise failure

    assert runs == ["body"]
    assert raised.value is failure  # the same exception, not wrapped or swallowed


class _RecordedNvtx:
    """Stands in for CuPy's NVTX bindings (absent here): records pushes and pops."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def RangePush(self, name: str) -> None:  # noqa: N802 (CuPy's names)
        self.calls.append(("push", name))

    def RangePop(self) -> None:  # noqa: N802
        self.calls.append(("pop", None))


def test_a_range_is_popped_when_its_body_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = _RecordedNvtx()
    monkeypatch.setattr(nvtx, "_NVTX", recorded)

    with (
        pytest.raises(ValueError, match="bad batch"),
        nvtx_range("preprocess.resize_normalize"),
        nvtx_range("postprocess.fused"),
    ):
        raise ValueError("bad batch")

    assert recorded.calls == [
        ("push", "preprocess.resize_normalize"),
        ("push", "postprocess.fused"),
        ("pop", None),
        ("pop", None),
    ]


@pytest.mark.gpu
def test_ranges_push_and_pop_on_a_gpu_machine() -> None:
    assert nvtx._NVTX is not None, "CuPy's NVTX bindings are not available"
    with nvtx_range("preprocess.resize_normalize"), nvtx_range("postprocess.fused"):
        pass
