"""Choose the runtime for a network on a device, once, at load.

``auto`` (the default):

* a GPU: TensorRT when its Python package imports and a plan built for this model, this GPU
  architecture and this TensorRT version is in the plan folder (``$BGBLUR_TRT_PLAN_DIR``; plans
  and their names come from ``python -m bgblur.server.deploy build-engine``); otherwise PyTorch
  (fp16, channels_last, CUDA graphs captured at load: ``TorchRuntime``). A plan that fails to
  load is logged and PyTorch serves instead.
* the CPU: whichever of PyTorch (eager, fp32, channels_last) and ONNX Runtime
  (``OnnxRuntimeCPU``) is the faster for the network on the CPU
  (``CPU_RUNTIME_BY_MODEL``, from ``bench/models.py``; ``bench/results/models-cpu.json``),
  PyTorch for networks not in that table. When ONNX Runtime is preferred but cannot serve
  (onnxruntime or onnx missing, export failed) PyTorch serves, with a warning.

The ``segmentation`` model's config parameter ``runtime`` picks another: ``torch`` (always
PyTorch), ``onnxruntime`` (ONNX Runtime, on the CPU, or an error), ``tensorrt`` (TensorRT or an
error), ``auto``. Anything else is a ValueError.

``describe_runtime(runtime)`` is the line the ``segmentation`` model logs at load: the runtime's
``name`` and its ``describe()``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bgblur.device import Device
from bgblur.errors import ModelUnavailableError
from bgblur.models.registry import SegmentationModelSpec
from bgblur.runtimes.base import SegmentationRuntime

LOG = logging.getLogger(__name__)

RUNTIME_CHOICES = ("auto", "torch", "onnxruntime", "tensorrt")

CPU_RUNTIME_BY_MODEL: dict[str, str] = {
    # onnxruntime: about a tie with torch on idle cores, and far ahead once the cores are
    # shared, as the pipeline's other stages share them when served (torch's OpenMP threads
    # stall); selfie_landscape and fcn_resnet101 were faster on it in every set (cpu_ab in
    # bench/results/models-cpu.json). fixed_ellipse (no network: a mask drawn by a few tensor
    # ops) stays on torch: there is nothing to gain and an export to pay.
    "selfie_general": "onnxruntime",
    "selfie_landscape": "onnxruntime",
    "fcn_resnet101": "onnxruntime",
    "fcn_resnet101_cat": "onnxruntime",  # the same network, another output class
}
"""The CPU runtime per network where ONNX Runtime was measured faster; PyTorch elsewhere."""

CONFIG_RUNTIME = "runtime"
CONFIG_BATCH_SIZES = "cuda_graph_batch_sizes"
CONFIG_COMPILE = "torch_compile"
"""The ``segmentation`` model's config parameters read by ``runtime_options``."""


def runtime_choice(configured: str | None = None) -> str:
    """The configured choice (the ``runtime`` config parameter), normalized; ``auto`` when
    None or empty.

    Raises:
        ValueError: a value that is not one of ``RUNTIME_CHOICES``.
    """
    choice = (configured or "").strip().lower() or "auto"
    if choice not in RUNTIME_CHOICES:
        raise ValueError(
            f"the {CONFIG_RUNTIME!r} parameter must be one of {', '.join(RUNTIME_CHOICES)}, "
            f"not {choice!r}"
        )
    return choice


def cpu_runtime_for(spec: SegmentationModelSpec) -> str:
    """``onnxruntime`` or ``torch``: the faster on the CPU for ``spec``
    (``CPU_RUNTIME_BY_MODEL``)."""
    return CPU_RUNTIME_BY_MODEL.get(spec.name, "torch")


def parse_batch_sizes(text: str, max_batch_size: int | None = None) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> ``(1, 2, 4, 8)``; ``max_batch_size`` is added when the largest size is
    below it (the buckets must cover every batch Triton can form)."""
    from bgblur.runtimes.torch_runtime import normalize_batch_sizes

    try:
        sizes = normalize_batch_sizes(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise ValueError(
            f"{CONFIG_BATCH_SIZES} must be positive integers separated by commas, not {text!r}"
        ) from None
    if max_batch_size and max_batch_size > sizes[-1]:
        LOG.info("adding batch size %d (max_batch_size) to %s", max_batch_size, sizes)
        sizes = (*sizes, int(max_batch_size))
    return sizes


def runtime_options(
    parameters: Mapping[str, str], max_batch_size: int | None = None
) -> dict[str, Any]:
    """``build_runtime`` keyword arguments from the ``segmentation`` model's config:
    ``runtime`` (``auto``), ``cuda_graph_batch_sizes`` (``1,2,4,8``, extended to
    ``max_batch_size``), ``torch_compile`` (``off``, ``on`` or a mode)."""
    from bgblur.runtimes.torch_runtime import DEFAULT_BATCH_SIZES, resolve_compile_mode

    text = parameters.get(CONFIG_BATCH_SIZES, "") or ",".join(map(str, DEFAULT_BATCH_SIZES))
    return {
        "choice": runtime_choice(parameters.get(CONFIG_RUNTIME)),
        "torch_options": {
            "batch_sizes": parse_batch_sizes(text, max_batch_size),
            "compile": resolve_compile_mode(parameters.get(CONFIG_COMPILE, "off")),
        },
    }


def describe_runtime(runtime: Any) -> str:
    """``name: describe()`` of a runtime (``name`` alone when it has no ``describe``)."""
    name = getattr(runtime, "name", type(runtime).__name__)
    describe = getattr(runtime, "describe", None)
    if callable(describe):
        return f"{name}: {describe()}"
    plan = getattr(runtime, "plan_path", None)
    return f"{name}: {plan}" if plan is not None else str(name)


def tensorrt_plan_for(
    spec: SegmentationModelSpec,
    device: Device,
    plan_dir: Path | None = None,
    max_batch: int | None = None,
) -> Path | None:
    """The TensorRT plan to run ``spec`` on ``device`` with, or None: not a GPU, no plan folder
    (``plan_dir`` or ``$BGBLUR_TRT_PLAN_DIR``), TensorRT not importable, or no plan there for
    this model, GPU architecture and TensorRT version. ``max_batch``: the largest batch it will
    run (the model's ``max_batch_size``): the narrowest plan covering it is preferred
    (``tensorrt_build.find_plan``)."""
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
    plan = find_plan(folder, spec.name, capability, version, max_batch)
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
    choice: str | None = None,
    torch_options: Mapping[str, Any] | None = None,
) -> SegmentationRuntime:
    """The runtime for ``spec`` on ``device`` (see the module docstring), built and warmed up.

    Args:
        choice: the configured choice (``runtime_choice``); None: ``auto``.
        torch_options: keyword arguments for ``TorchRuntime`` (``batch_sizes``, ``compile``).

    Raises:
        ValueError: an unknown runtime name.
        ModelUnavailableError: the runtime asked for cannot serve (``tensorrt`` without a
            usable plan, ``onnxruntime`` on a GPU or without onnxruntime).
    """
    choice = runtime_choice(choice)
    if choice == "onnxruntime":
        return _onnxruntime(spec, device, cache_dir)
    if device.is_gpu and choice in ("auto", "tensorrt"):
        # The largest bucket covers the model's max_batch_size (parse_batch_sizes).
        buckets = tuple((torch_options or {}).get("batch_sizes") or ())
        plan = tensorrt_plan_for(spec, device, plan_dir, max(buckets) if buckets else None)
        if plan is not None:
            from bgblur.runtimes.tensorrt_runtime import TensorRTRuntime

            try:
                return TensorRTRuntime(spec, device, plan)
            except (ModelUnavailableError, RuntimeError) as exc:
                if choice == "tensorrt":
                    raise
                LOG.warning("TensorRT plan %s unusable (%s): PyTorch runs %s", plan, exc, spec.name)
    if choice == "tensorrt":
        raise ModelUnavailableError(
            f"runtime 'tensorrt' asked for, but there is no usable TensorRT plan for {spec.name} "
            f"on {device} (TensorRT importable, a plan in $BGBLUR_TRT_PLAN_DIR built for this "
            "GPU and TensorRT version: python -m bgblur.server.deploy build-engine builds one)"
        )
    if choice == "auto" and not device.is_gpu and cpu_runtime_for(spec) == "onnxruntime":
        try:
            return _onnxruntime(spec, device, cache_dir)
        except ModelUnavailableError as exc:
            LOG.warning("ONNX Runtime cannot serve %s (%s): PyTorch runs it", spec.name, exc)
    from bgblur.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(spec, device, cache_dir=cache_dir, **dict(torch_options or {}))


def _onnxruntime(
    spec: SegmentationModelSpec, device: Device, cache_dir: Path | None
) -> SegmentationRuntime:
    if device.is_gpu:
        raise ModelUnavailableError(
            f"runtime 'onnxruntime' runs on the CPU only; {device} takes torch or tensorrt"
        )
    from bgblur.runtimes.onnx_runtime import OnnxRuntimeCPU

    return OnnxRuntimeCPU(spec, device, cache_dir=cache_dir)
