"""Triton Python-backend plumbing shared by the three adapters in ``model_repository/``.

``pb_utils`` (``triton_python_backend_utils``) exists only inside Triton's Python stub, so it is
passed in, never imported here: the library stays importable and testable without Triton.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch  # at load: NumPy outputs go through it (2 s to import on a CPU, not in a request)

from bgblur.device import Device
from bgblur.errors import InvalidInputError
from bgblur.ops.dispatch import array_module
from bgblur.parameters import BlurParams, validate_frames_shape
from bgblur.serving.profiling import execute_profile

if TYPE_CHECKING:
    from bgblur.serving.metrics import StageMetrics

LOG = logging.getLogger("bgblur.serving")


def model_parameters(args: dict) -> dict[str, str]:
    """The ``parameters { key: ... value { string_value: ... } }`` of a model's config.pbtxt."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def request_parameters(request: Any) -> dict[str, Any]:
    """A request's parameters (``infer(..., parameters={...})``) as a dict."""
    raw = request.parameters()
    return json.loads(raw) if raw else {}


def blur_params_from_request(request: Any, defaults: BlurParams) -> BlurParams:
    """``defaults`` with the request's overrides (``InvalidInputError`` naming a bad one)."""
    return defaults.with_overrides(request_parameters(request))


def input_array(pb_utils: Any, request: Any, name: str, device: Device) -> Any:
    """Input ``name`` of ``request`` as a NumPy (CPU) or CuPy (GPU) array, without copies
    where the tensor already lives on the right device."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InvalidInputError(f"missing input tensor {name!r}")
    if tensor.is_cpu():
        # Through torch, not np.from_dlpack: NumPy marks DLPack imports read-only, and torch
        # warns whenever torch.from_numpy wraps a read-only array (outputs, the CPU network).
        # The view is writable and shares the tensor's memory.
        array = torch.from_dlpack(tensor.to_dlpack()).numpy()
        if device.is_gpu:
            import cupy

            with cupy.cuda.Device(device.index):
                array = cupy.asarray(array)
        return array
    import cupy

    with cupy.cuda.Device(device.index):
        return cupy.from_dlpack(tensor)


def optional_input_array(pb_utils: Any, request: Any, name: str, device: Device) -> Any:
    """Input ``name`` of ``request`` as ``input_array`` gives it, or None when the request has
    no such tensor (an ``optional: true`` input left out)."""
    if pb_utils.get_input_tensor_by_name(request, name) is None:
        return None
    return input_array(pb_utils, request, name, device)


def background_input(
    pb_utils: Any, request: Any, device: Device, params: BlurParams, batch: int
) -> Any:
    """The request's optional BACKGROUND tensor, checked against ``params`` and the frames'
    ``batch`` (``bgblur.stages.postprocess.check_background``: ``InvalidInputError`` naming the
    parameter or the tensor), a batch of 1 broadcast to ``batch`` (a view, no copy); None
    without one."""
    from bgblur.stages.postprocess import BACKGROUND_TENSOR, check_background

    background = optional_input_array(pb_utils, request, BACKGROUND_TENSOR, device)
    check_background(params, background, batch)
    if background is not None and background.shape[0] != batch:
        xp = array_module(background)
        background = xp.broadcast_to(background, (batch, *background.shape[1:]))
    return background


def frames_input(pb_utils: Any, request: Any, device: Device, name: str = "FRAMES") -> Any:
    """The frames tensor of a request, validated (``bgblur.parameters.validate_frames_shape``)."""
    frames = input_array(pb_utils, request, name, device)
    validate_frames_shape(tuple(frames.shape), np.dtype(frames.dtype).name, name)
    return frames


def output_tensor(pb_utils: Any, name: str, array: Any) -> Any:
    """A Triton output tensor from a NumPy, CuPy or torch array, through DLPack (zero copy).

    NumPy arrays go through ``torch.from_numpy``: the stub cannot consume NumPy 1.x's own DLPack
    capsules, and ``pb_utils.Tensor(name, ndarray)`` loses the data with NumPy 2 in Triton 2.51.
    """
    if isinstance(array, np.ndarray):
        array = torch.from_numpy(np.ascontiguousarray(array))
    elif hasattr(array, "is_contiguous"):  # torch
        array = array.contiguous()
    else:
        array = array_module(array).ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array)


def error_response(
    pb_utils: Any, message: str, *, invalid_arg: bool = False, code: Any = None
) -> Any:
    """An error response: ``code`` (a ``pb_utils.TritonError`` code) when given, else
    INVALID_ARG or INTERNAL."""
    if code is None:
        code = pb_utils.TritonError.INVALID_ARG if invalid_arg else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


# ------------------------------------------------------------------------------------------------
# GPU out of memory
# ------------------------------------------------------------------------------------------------

#: Modules whose exceptions are GPU errors (CuPy's, its CUDA bindings', PyTorch's, TensorRT's).
_GPU_MODULES = ("cupy", "cupy_backends", "cupyx", "torch", "tensorrt", "cuda")

#: Substrings (lower case) of the messages of CUDA out-of-memory errors that have no type of
#: their own: the CUDA runtime's ``cudaErrorMemoryAllocation`` ("out of memory"), the driver's
#: ``CUDA_ERROR_OUT_OF_MEMORY``, cuBLAS/cuDNN/cuFFT allocation failures.
_OOM_MESSAGES = (
    "out of memory",
    "cudaerrormemoryallocation",
    "cuda_error_out_of_memory",
    "alloc_failed",
)


def _oom_types() -> tuple[type, ...]:
    """The out-of-memory exception types of the GPU libraries already imported (never imports
    CuPy or PyTorch: a CPU model instance must not pay for them)."""
    types: list[type] = []
    torch = sys.modules.get("torch")
    if torch is not None:
        for owner in (torch, getattr(torch, "cuda", None)):
            oom = getattr(owner, "OutOfMemoryError", None)
            if isinstance(oom, type):
                types.append(oom)
    memory = sys.modules.get("cupy.cuda.memory")
    oom = getattr(memory, "OutOfMemoryError", None) if memory is not None else None
    if isinstance(oom, type):
        types.append(oom)
    return tuple(types)


def is_gpu_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is the GPU running out of memory.

    By type where CuPy or PyTorch is loaded (``cupy.cuda.memory.OutOfMemoryError``,
    ``torch.OutOfMemoryError`` = ``torch.cuda.OutOfMemoryError``); else by class name
    (``OutOfMemoryError`` from a GPU library); and CUDA errors without a type of their own by
    message (``CUDARuntimeError: cudaErrorMemoryAllocation: out of memory``, ``RuntimeError:
    CUDA error: out of memory``, ``CUBLAS_STATUS_ALLOC_FAILED``). A host ``MemoryError`` is not.
    """
    types = _oom_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        if types and isinstance(current, types):
            return True
        cls = type(current)
        gpu_class = any(
            c.__module__.split(".")[0] in _GPU_MODULES for c in cls.__mro__ if c is not object
        )
        if gpu_class and any(c.__name__ == "OutOfMemoryError" for c in cls.__mro__):
            return True
        if not isinstance(current, MemoryError):
            message = str(current).lower()
            if (gpu_class or "cuda" in message or "cublas" in message or "cudnn" in message) and (
                any(m in message for m in _OOM_MESSAGES)
            ):
                return True
        current = current.__cause__ or current.__context__
    return False


def release_gpu_memory() -> None:
    """Give the GPU memory cached by this process back to the device after an out-of-memory
    error: CuPy's default memory pool (``free_all_blocks``) and PyTorch's caching allocator
    (``torch.cuda.empty_cache``), each only where already loaded. Blocks still in use (CUDA
    graphs' pools, live arrays) stay; nothing here raises."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            cupy.get_default_memory_pool().free_all_blocks()
        except Exception:
            LOG.warning("could not free CuPy's memory pool", exc_info=True)
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except Exception:
            LOG.warning("could not empty PyTorch's CUDA cache", exc_info=True)


def gpu_oom_message(stage: str, frames: int, sizes: Sequence[str]) -> str:
    """What a client reads when ``stage`` ran out of GPU memory on a batch of ``frames``
    frames of ``sizes`` (``WIDTHxHEIGHT``, as the library's other messages)."""
    noun = "frame" if frames == 1 else "frames"
    of = f" of {' and '.join(dict.fromkeys(sizes))}" if sizes else ""
    return (
        f"GPU out of memory in {stage} for a batch of {frames} {noun}{of}: "
        "retry later or send smaller batches"
    )


def _frame_size(shape: Sequence[int]) -> str | None:
    """``WIDTHxHEIGHT`` of a batch-first image tensor's shape: NHWC (frames, last dimension
    1, 3 or 4 channels) or NCHW (network tensors); None for anything else."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 4:
        return None
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        height, width = shape[1], shape[2]
    elif shape[1] in (1, 3, 4):
        height, width = shape[2], shape[3]
    else:
        return None
    return f"{width}x{height}"


def _group_sizes(prepared: Sequence[PreparedRequest]) -> list[str]:
    sizes = (_frame_size(getattr(p.arrays[0], "shape", ())) for p in prepared)
    return [s for s in sizes if s is not None]


def _request_size(request: Any) -> list[str]:
    """The frame size of a request that could not be read: its first input that looks like
    frames (NHWC), else its first image-shaped input; [] where unreadable."""
    try:
        shapes = [tuple(t.shape()) for t in request.inputs()]
    except Exception:
        return []
    frames = [s for s in shapes if len(s) == 4 and s[3] in (1, 3, 4)]
    for shape in frames + shapes:
        size = _frame_size(shape)
        if size is not None:
            return [size]
    return []


@dataclass
class PreparedRequest:
    """One request's validated inputs. Requests with equal ``key`` run as one batch.

    Attributes:
        key: grouping key (input shapes past the batch dimension, options).
        arrays: the request's input arrays, batch first, in the order ``run`` takes them.
        options: per-request options (equal for equal keys), passed to ``run``.
    """

    key: Hashable
    arrays: tuple[Any, ...]
    options: Any = None
    batch: int = field(init=False)

    def __post_init__(self) -> None:
        self.batch = int(self.arrays[0].shape[0])


class PerRequest(list):
    """An output of ``run`` already split per request, in the group's order (for outputs whose
    shapes differ between requests, e.g. frames of different sizes)."""


def execute_grouped(
    pb_utils: Any,
    requests: Sequence[Any],
    prepare: Callable[[Any], PreparedRequest],
    run: Callable[[tuple[Any, ...], Any], Sequence[Any]],
    output_names: Sequence[str],
    metrics: StageMetrics | None = None,
    *,
    stack: bool = True,
    stage: str | None = None,
) -> list[Any]:
    """Answer ``requests`` in order, one response each.

    ``prepare(request)`` validates and reads one request (``InvalidInputError`` -> that request
    alone gets INVALID_ARG). Requests whose keys match are concatenated along the batch and run
    once by ``run(arrays, options) -> outputs`` (one array per ``output_names``, batch first);
    the outputs are split back per request. A failure in ``run`` fails that group only.
    With ``stack=False`` nothing is concatenated: ``run`` gets, per input, the list of the
    group's arrays (shapes may differ), and may return ``PerRequest`` outputs.
    ``metrics`` (``bgblur.serving.metrics.StageMetrics``), when given, records each batch run
    (frames, compute time from ``run`` to the output tensors) and each rejection or failure.

    The GPU running out of memory (``is_gpu_out_of_memory``), in ``prepare`` or ``run``, fails
    the request or group with UNAVAILABLE (retryable) "GPU out of memory in ``stage`` for a
    batch of N frames of WxH: ...", counted as ``reason="gpu_oom"``; the memory the process
    cached is given back (``release_gpu_memory``) and the model goes on serving. ``stage``
    names the model's stage in that message (default: ``metrics.stage``, else "the model").
    With ``$BGBLUR_PROFILE_DIR`` set, each call is profiled (``bgblur.serving.profiling``).
    """
    if stage is None:
        stage = metrics.stage if metrics is not None else "the model"
    with execute_profile(stage, len(requests)):
        return _execute_grouped(
            pb_utils, requests, prepare, run, output_names, metrics, stack=stack, stage=stage
        )


def _execute_grouped(
    pb_utils: Any,
    requests: Sequence[Any],
    prepare: Callable[[Any], PreparedRequest],
    run: Callable[[tuple[Any, ...], Any], Sequence[Any]],
    output_names: Sequence[str],
    metrics: StageMetrics | None,
    *,
    stack: bool,
    stage: str,
) -> list[Any]:
    responses: list[Any] = [None] * len(requests)
    groups: dict[Hashable, list[tuple[int, PreparedRequest]]] = {}
    out_of_memory = False
    for index, request in enumerate(requests):
        try:
            prepared = prepare(request)
        except InvalidInputError as exc:
            responses[index] = error_response(pb_utils, str(exc), invalid_arg=True)
            if metrics is not None:
                metrics.rejected(exc, _request_frames(request))
            continue
        except Exception as exc:
            message, code = _failure(
                pb_utils,
                exc,
                metrics,
                stage,
                [_request_frames(request)],
                functools.partial(_request_size, request),
            )
            responses[index] = error_response(pb_utils, message, code=code)
            out_of_memory |= is_gpu_out_of_memory(exc)
            continue
        groups.setdefault(prepared.key, []).append((index, prepared))

    for members in groups.values():
        try:
            _run_group(pb_utils, members, run, output_names, responses, metrics, stack=stack)
        except InvalidInputError as exc:
            for index, _ in members:
                responses[index] = error_response(pb_utils, str(exc), invalid_arg=True)
            if metrics is not None:
                metrics.rejected_batch(exc, [p.batch for _, p in members])
        except Exception as exc:
            prepared_group = [p for _, p in members]
            message, code = _failure(
                pb_utils,
                exc,
                metrics,
                stage,
                [p.batch for p in prepared_group],
                functools.partial(_group_sizes, prepared_group),
            )
            for index, _ in members:
                responses[index] = error_response(pb_utils, message, code=code)
            out_of_memory |= is_gpu_out_of_memory(exc)
    if out_of_memory:
        # Here, outside the handlers: the failed attempt's arrays (referenced by the traceback
        # until then) are garbage now, so their blocks go back to the device too.
        groups.clear()
        release_gpu_memory()
    return responses


def _run_group(
    pb_utils: Any,
    members: list[tuple[int, PreparedRequest]],
    run: Callable[[tuple[Any, ...], Any], Sequence[Any]],
    output_names: Sequence[str],
    responses: list[Any],
    metrics: StageMetrics | None,
    *,
    stack: bool,
) -> None:
    """Run one group of requests and put their responses in ``responses``."""
    started = time.perf_counter()
    prepared_group = [p for _, p in members]
    inputs = _concatenate(prepared_group) if stack else _columns(prepared_group)
    outputs = run(inputs, members[0][1].options)
    start = 0
    answered = []
    for k, (index, prepared) in enumerate(members):
        stop = start + prepared.batch
        tensors = [
            output_tensor(
                pb_utils, name, out[k] if isinstance(out, PerRequest) else out[start:stop]
            )
            for name, out in zip(output_names, outputs, strict=True)
        ]
        answered.append((index, pb_utils.InferenceResponse(output_tensors=tensors)))
        start = stop
    # All or nothing: a failure while building one response fails the whole group.
    for index, response in answered:
        responses[index] = response
    if metrics is not None:
        metrics.batch(start, time.perf_counter() - started)


def _failure(
    pb_utils: Any,
    exc: Exception,
    metrics: StageMetrics | None,
    stage: str,
    frame_counts: Sequence[int],
    sizes: Callable[[], list[str]],
) -> tuple[str, Any]:
    """The error message and ``pb_utils.TritonError`` code for ``exc`` raised while serving
    requests of ``frame_counts`` frames: UNAVAILABLE for the GPU out of memory, else INTERNAL;
    logged and counted."""
    requests = len(frame_counts)
    if is_gpu_out_of_memory(exc):
        message = gpu_oom_message(stage, sum(frame_counts), sizes())
        LOG.warning("%s (%d requests; %s: %s)", message, requests, type(exc).__name__, exc)
        if metrics is not None:
            metrics.failed(requests, "gpu_oom")
        return message, pb_utils.TritonError.UNAVAILABLE
    LOG.error("batch of %d requests failed", requests, exc_info=exc)
    if metrics is not None:
        metrics.failed(requests, "error")
    return f"internal error: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL


def _request_frames(request: Any) -> int:
    """Batch size of a request (its first input's first dimension); 0 where unreadable."""
    try:
        return int(request.inputs()[0].shape()[0])
    except Exception:
        return 0


def _columns(prepared: list[PreparedRequest]) -> tuple[list[Any], ...]:
    return tuple(list(column) for column in zip(*(p.arrays for p in prepared), strict=True))


def _concatenate(prepared: list[PreparedRequest]) -> tuple[Any, ...]:
    if len(prepared) == 1:
        return prepared[0].arrays
    columns = zip(*(p.arrays for p in prepared), strict=True)
    return tuple(array_module(col[0]).concatenate(col, axis=0) for col in columns)


def parse_hw(text: str) -> tuple[int, int]:
    """``"224x224"`` (width x height) -> ``(height, width)``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"expected a positive WIDTHxHEIGHT, got {text!r}")
    return height, width
