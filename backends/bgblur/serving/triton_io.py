"""Triton Python-backend plumbing shared by the three adapters in ``model_repository/``.

``pb_utils`` (``triton_python_backend_utils``) exists only inside Triton's Python stub, so it is
passed in, never imported here: the library stays importable and testable without Triton.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bgblur.config import BlurParams, validate_frames_shape
from bgblur.device import Device
from bgblur.errors import InvalidInputError
from bgblur.ops.dispatch import array_module

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
        array = np.from_dlpack(tensor)
        if device.is_gpu:
            import cupy

            with cupy.cuda.Device(device.index):
                array = cupy.asarray(array)
        return array
    import cupy

    with cupy.cuda.Device(device.index):
        return cupy.from_dlpack(tensor)


def frames_input(pb_utils: Any, request: Any, device: Device, name: str = "FRAMES") -> Any:
    """The frames tensor of a request, validated (``bgblur.config.validate_frames_shape``)."""
    frames = input_array(pb_utils, request, name, device)
    validate_frames_shape(tuple(frames.shape), np.dtype(frames.dtype).name, name)
    return frames


def output_tensor(pb_utils: Any, name: str, array: Any) -> Any:
    """A Triton output tensor from a NumPy, CuPy or torch array, through DLPack (zero copy).

    NumPy arrays go through ``torch.from_numpy``: the stub cannot consume NumPy 1.x's own DLPack
    capsules, and ``pb_utils.Tensor(name, ndarray)`` loses the data with NumPy 2 in Triton 2.51.
    """
    if isinstance(array, np.ndarray):
        import torch

        array = torch.from_numpy(np.ascontiguousarray(array))
    elif hasattr(array, "is_contiguous"):  # torch
        array = array.contiguous()
    else:
        array = array_module(array).ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array)


def error_response(pb_utils: Any, message: str, *, invalid_arg: bool) -> Any:
    code = pb_utils.TritonError.INVALID_ARG if invalid_arg else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


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
    """
    responses: list[Any] = [None] * len(requests)
    groups: dict[Hashable, list[tuple[int, PreparedRequest]]] = {}
    for index, request in enumerate(requests):
        try:
            prepared = prepare(request)
        except InvalidInputError as exc:
            responses[index] = error_response(pb_utils, str(exc), invalid_arg=True)
            if metrics is not None:
                metrics.rejected(exc, _request_frames(request))
            continue
        groups.setdefault(prepared.key, []).append((index, prepared))

    for members in groups.values():
        try:
            started = time.perf_counter()
            prepared_group = [p for _, p in members]
            inputs = _concatenate(prepared_group) if stack else _columns(prepared_group)
            outputs = run(inputs, members[0][1].options)
            start = 0
            for k, (index, prepared) in enumerate(members):
                stop = start + prepared.batch
                tensors = [
                    output_tensor(
                        pb_utils, name, out[k] if isinstance(out, PerRequest) else out[start:stop]
                    )
                    for name, out in zip(output_names, outputs, strict=True)
                ]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop
            if metrics is not None:
                metrics.batch(start, time.perf_counter() - started)
        except InvalidInputError as exc:
            for index, _ in members:
                responses[index] = error_response(pb_utils, str(exc), invalid_arg=True)
            if metrics is not None:
                metrics.rejected_batch(exc, [p.batch for _, p in members])
        except Exception as exc:
            LOG.exception("batch of %d requests failed", len(members))
            if metrics is not None:
                metrics.failed(len(members))
            for index, _ in members:
                responses[index] = error_response(
                    pb_utils, f"internal error: {type(exc).__name__}: {exc}", invalid_arg=False
                )
    return responses


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
