"""NVTX ranges: named ``<stage>.<op>`` after the stages' metric labels, opened where the
stages run, harmless without CUDA."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bgblur.stages import nvtx
from bgblur.stages.nvtx import RANGES, nvtx_range

REPO = Path(__file__).resolve().parents[2]
STAGES = ("preprocess", "segmentation", "postprocess")  # the metrics' ``model`` labels


def test_every_range_is_named_after_a_stage() -> None:
    for name in RANGES:
        stage, _, op = name.partition(".")
        assert stage in STAGES and re.fullmatch(r"[a-z_]+", op), name
    for stage in STAGES:  # each stage's model is in the repository under that name
        assert (REPO / "model_repository" / stage / "config.pbtxt").is_file()


def test_every_range_is_opened_somewhere_and_only_those() -> None:
    sources = [*REPO.glob("backends/bgblur/**/*.py"), *REPO.glob("model_repository/*/1/*.py")]
    opened = set()
    for path in sources:
        opened.update(re.findall(r'nvtx_range\("([^"]+)"\)', path.read_text()))
    assert opened == set(RANGES)


def test_a_range_without_cuda_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvtx, "_NVTX", None)
    with nvtx_range("postprocess.fused"):
        value = 1
    assert value == 1


@pytest.mark.gpu
def test_ranges_push_and_pop_on_a_gpu_machine() -> None:
    assert nvtx._NVTX is not None, "CuPy's NVTX bindings are not available"
    with nvtx_range("preprocess.resize_normalize"), nvtx_range("postprocess.fused"):
        pass
