"""Choose the runtime for a network on a device.

On a GPU, TensorRT when its Python package imports and a plan built for this model, this GPU
architecture and this TensorRT version is in the plan folder (``$BGBLUR_TRT_PLAN_DIR``; plans
and their names come from ``python -m bgblur.runtimes.tensorrt_build``); otherwise, and always
on the CPU, PyTorch (CUDA graphs on the GPU, eager on the CPU). A plan that fails to load is
logged and PyTorch serves instead. ``$BGBLUR_RUNTIME`` overrides: ``torch`` (never TensorRT),
``tensorrt`` (TensorRT or an error), ``auto`` (the default).
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from bgblur.device import Device
from bgblur.errors import ModelUnavailableError
from bgblur.models.registry import SegmentationModelSpec
from bgblur.runtimes.base import SegmentationRuntime

LOG = logging.getLogger(__name__)

RUNTIME_ENV = "BGBLUR_RUNTIME"
RUNTIME_CHOICES = ("auto", "torch", "tensorrt")


def runtime_choice() -> str:
    """``$BGBLUR_RUNTIME`` (``auto`` when unset)."""
    choice = os.environ.get(RUNTIME_ENV, "").strip().lower() or "auto"
    if choice not in RUNTIME_CHOICES:
        raise ValueError(
            f"{RUNTIME_ENV} must be one of {', '.join(RUNTIME_CHOICES)}, not {choice!r}"
        )
    return choice


def tensorrt_plan_for(
    spec: SegmentationModelSpec, device: Device, plan_dir: Path | None = None
) -> Path | None:
    """The TensorRT plan to run ``spec`` on ``device`` with, or None: not a GPU, no plan folder
    (``plan_dir`` or ``$BGBLUR_TRT_PLAN_DIR``), TensorRT not importable, or no plan there for
    this model, GPU architecture and TensorRT version."""
    from bgblur.runtimes.tensorrt_build import default_plan_dir, find_plan, gpu_compute_capability

    if not device.is_gpu:
        return None
    folder = plan_dir if plan_dir is not None else default_plan_dir()
    if folder is None or not Path(folder).is_dir():
        return None
    try:
        trt = importlib.import_module("tensorrt")
        version = str(trt.__version__)
    except Exception as exc:  # absent, or an install that fails to load its libraries
        LOG.info("TensorRT not usable here (%s): PyTorch runs %s", exc, spec.name)
        return None
    try:
        capability = gpu_compute_capability(device.index)
    except ModelUnavailableError:
        return None
    plan = find_plan(folder, spec.name, capability, version)
    if plan is None:
        LOG.info(
            "no TensorRT plan for %s (sm%d%d, TensorRT %s) in %s: PyTorch runs it",
            spec.name,
            *capability,
            version,
            folder,
        )
    return plan


def build_runtime(
    spec: SegmentationModelSpec,
    device: Device,
    *,
    cache_dir: Path | None = None,
    plan_dir: Path | None = None,
) -> SegmentationRuntime:
    """The best runtime available for ``spec`` on ``device`` (see the module docstring).

    Raises:
        ModelUnavailableError: ``$BGBLUR_RUNTIME=tensorrt`` and no usable plan.
    """
    choice = runtime_choice()
    if choice != "torch":
        plan = tensorrt_plan_for(spec, device, plan_dir)
        if plan is not None:
            from bgblur.runtimes.tensorrt_runtime import TensorRTRuntime

            try:
                return TensorRTRuntime(spec, device, plan)
            except (ModelUnavailableError, RuntimeError) as exc:
                if choice == "tensorrt":
                    raise
                LOG.warning("TensorRT plan %s unusable (%s): PyTorch runs %s", plan, exc, spec.name)
        elif choice == "tensorrt":
            raise ModelUnavailableError(
                f"{RUNTIME_ENV}=tensorrt, but there is no usable TensorRT plan for {spec.name} on "
                f"{device} (TensorRT importable, a plan in $BGBLUR_TRT_PLAN_DIR built for "
                "this GPU and TensorRT version: see python -m bgblur.runtimes.tensorrt_build)"
            )
    from bgblur.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(spec, device, cache_dir=cache_dir)
