"""NVTX ranges around each stage and op, named ``<stage>.<op>``: ``<stage>`` is the ``model``
label of the stage's metrics (``bgblur_*``, ``nv_inference_*``), so a profile (Nsight Systems)
and the dashboards name the same work alike. Without CuPy or without NVTX (a CPU machine) a
range is a no-op costing one attribute check."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# Every range the stages open (tests hold them to the metric names).
RANGES = (
    "preprocess.resize_normalize",
    "segmentation.network",
    "temporal_smoothing.smooth",
    "postprocess.fused",
    "postprocess.mask",
    "postprocess.bilateral",
    "postprocess.background_blur",
    "postprocess.composite",
)


def _nvtx() -> Any:
    try:
        from cupy.cuda import nvtx
    except Exception:  # no CuPy, no CUDA: no ranges
        return None
    return nvtx if getattr(nvtx, "available", False) else None


_NVTX = _nvtx()


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    """An NVTX range ``name`` (one of ``RANGES``) around the block, on the calling thread."""
    if _NVTX is None:
        yield
        return
    _NVTX.RangePush(name)
    try:
        yield
    finally:
        _NVTX.RangePop()
