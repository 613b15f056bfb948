"""Checks of KServe-v2 HTTP request bodies made before Triton sees them (the HTTP guard's rules).

Triton 2.51's HTTP front end trusts a request's structure: a declared shape whose element count
overflows aborts the server (``std::length_error``), deeply nested JSON overflows its parser's
stack, a gzip body inflates without bound, thousands of parameters cost seconds of CPU, and
malformed ``data`` comes back as a 500. These functions refuse all of that with a
``RequestRefusedError`` that carries the HTTP status and a message naming what was wrong (echoed
values shortened). They are pure: bytes and headers in, a parsed header or an exception out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from bgblur.errors import InvalidInputError
from bgblur.parameters import ECHO_CHARS, MAX_REQUEST_BYTES, shorten, validate_frames_shape

# Bytes per element of Triton's fixed-size datatypes (BYTES is variable).
DATATYPE_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}
INTEGER_RANGES = {
    "UINT8": (0, 2**8 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "UINT16": (0, 2**16 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "UINT32": (0, 2**32 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}
# Tensors the project's models take as frames: checked against the frame limits too.
FRAME_TENSORS = ("FRAMES",)


@dataclass(frozen=True)
class RequestLimits:
    """What one HTTP request may carry (docs/reliability.md lists them).

    Attributes:
        max_body_bytes: a whole body: the largest FRAMES tensor as binary data plus its header.
        max_json_body_bytes: a body with no binary part (tensors as JSON ``data``; ~4 bytes a
            uint8 value, so 16 MiB holds a ~1.3 Mpx frame).
        max_header_bytes: the JSON header of a binary request.
        max_depth: nesting of JSON arrays and objects (a 4-D ``data`` array inside the request
            object needs 7).
        max_tensors: inputs, and requested outputs, per request.
        max_elements: elements one tensor may declare.
        max_parameters: parameters per request, input or output.
        max_parameter_key_chars, max_parameter_value_chars: sizes of a parameter's key and of a
            string value.
        max_id_chars: the request ``id``.
    """

    max_body_bytes: int = MAX_REQUEST_BYTES + (1 << 20)
    max_json_body_bytes: int = 16 << 20
    max_header_bytes: int = 1 << 20
    max_depth: int = 16
    max_tensors: int = 16
    max_elements: int = MAX_REQUEST_BYTES
    max_parameters: int = 64
    max_parameter_key_chars: int = 128
    max_parameter_value_chars: int = 4096
    max_id_chars: int = 256


class RequestRefusedError(Exception):
    """A request the guard answers itself. ``status`` is the HTTP status (400, 413, 415...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _refuse_constant(name: str) -> float:
    raise RequestRefusedError(400, f"JSON number {name} is not accepted (non-finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestRefusedError(400, f"JSON number {shorten(text)} is not accepted (non-finite)")
    return value


def parse_json(data: bytes, limits: RequestLimits, what: str = "request body") -> Any:
    """Parse JSON with the nesting and number rules: depth <= ``limits.max_depth``, every
    number finite (``NaN``, ``Infinity`` and ``1e999`` refused).

    Raises:
        RequestRefusedError: 400 naming what was wrong.
    """
    _check_depth(data, limits.max_depth, what)
    try:
        return json.loads(data, parse_float=_finite_float, parse_constant=_refuse_constant)
    except RequestRefusedError:
        raise
    except (ValueError, RecursionError) as exc:
        raise RequestRefusedError(400, f"{what} is not valid JSON: {str(exc)[:120]}") from None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _check_depth(data: bytes, max_depth: int, what: str) -> None:
    """Refuse nesting deeper than ``max_depth`` before parsing: strings are blanked, every
    byte but brackets dropped, and the running depth summed in NumPy (no Python loop per byte,
    so a 2 MB body of brackets costs milliseconds, not the parser's stack)."""
    brackets = _JSON_STRING.sub(b'""', data).translate(None, _NOT_BRACKET)
    if not brackets:
        return
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    if int(np.cumsum(steps).max()) > max_depth:
        raise RequestRefusedError(400, f"{what} nests JSON deeper than {max_depth} levels")


def check_parameters(parameters: Any, where: str, limits: RequestLimits) -> dict[str, Any]:
    """A ``parameters`` object: at most ``max_parameters`` entries, bounded keys and string
    values, values of JSON scalar types."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise RequestRefusedError(400, f"{where} parameters must be a JSON object")
    if len(parameters) > limits.max_parameters:
        raise RequestRefusedError(
            400,
            f"{where} has {len(parameters)} parameters; at most {limits.max_parameters} accepted",
        )
    _check_sequence_parameters(parameters, where)
    for key, value in parameters.items():
        if len(key) > limits.max_parameter_key_chars:
            raise RequestRefusedError(
                400,
                f"{where} parameter name of {len(key)} characters; at most "
                f"{limits.max_parameter_key_chars}: {shorten(key)}",
            )
        if isinstance(value, str) and len(value) > limits.max_parameter_value_chars:
            raise RequestRefusedError(
                400,
                f"{where} parameter {shorten(key)} has a value of {len(value)} characters; at "
                f"most {limits.max_parameter_value_chars}",
            )
        if not isinstance(value, str | int | float | bool):
            raise RequestRefusedError(
                400, f"{where} parameter {shorten(key)} must be a string, number or boolean"
            )
    return parameters


def _check_sequence_parameters(parameters: dict[str, Any], where: str) -> None:
    if "sequence_id" in parameters:
        value = parameters["sequence_id"]
        ok = isinstance(value, str) or (
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64
        )
        if not ok:
            raise RequestRefusedError(
                400,
                f"{where} parameter 'sequence_id' must be a string or an integer in [0, 2^64), "
                f"got {shorten(value)}",
            )
    for flag in ("sequence_start", "sequence_end"):
        if flag in parameters and not isinstance(parameters[flag], bool):
            raise RequestRefusedError(
                400,
                f"{where} parameter {flag!r} must be true or false, got "
                f"{shorten(parameters[flag])}",
            )
    if "priority" in parameters:
        value = parameters["priority"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
            raise RequestRefusedError(
                400, f"{where} parameter 'priority' must be an integer >= 0, got {shorten(value)}"
            )
    if "timeout" in parameters:
        value = parameters["timeout"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
            raise RequestRefusedError(
                400,
                f"{where} parameter 'timeout' must be an integer >= 0 (microseconds), got "
                f"{shorten(value)}",
            )


def _leaves(data: Any, limit: int) -> Iterator[Any]:
    """The scalars of a nested JSON array, depth first, stopping past ``limit`` of them."""
    stack = [iter([data])]
    count = 0
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            continue
        if isinstance(item, list):
            stack.append(iter(item))
            continue
        count += 1
        yield item
        if count > limit:  # one past the limit tells the caller there are too many
            return


_END = object()
# ``data`` of an input whose values come as gRPC ``contents`` (checked apart, in NumPy).
CHECKED = object()


def _check_input(
    tensor: Any, index: int, limits: RequestLimits, binary_left: int
) -> tuple[str, int]:
    """One entry of ``inputs``; returns (name, bytes it takes of the binary part). An input
    whose values were checked already (gRPC ``contents``) carries ``"data": CHECKED``."""
    where = f"input {index}"
    if not isinstance(tensor, dict):
        raise RequestRefusedError(400, f"{where} must be a JSON object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name or len(name) > 256:
        raise RequestRefusedError(400, f"{where} needs a 'name' string, got {shorten(name)}")
    where = f"input {name!r}" if len(name) <= ECHO_CHARS else f"input {index}"
    datatype = tensor.get("datatype")
    if datatype != "BYTES" and datatype not in DATATYPE_BYTES:
        raise RequestRefusedError(400, f"{where} has an unknown datatype {shorten(datatype)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) > 8:
        raise RequestRefusedError(400, f"{where} 'shape' must be a list of at most 8 sizes")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise RequestRefusedError(
            400, f"{where} 'shape' must hold integers >= 0, got {shorten(shape)}"
        )
    elements = math.prod(shape)
    if elements > limits.max_elements:
        raise RequestRefusedError(
            400,
            f"{where} declares {elements} elements (shape {shorten(shape)}); at most "
            f"{limits.max_elements} accepted",
        )
    if name in FRAME_TENSORS and datatype == "UINT8":
        try:
            validate_frames_shape(tuple(shape), "uint8", tensor=name)
        except InvalidInputError as exc:
            raise RequestRefusedError(400, str(exc)) from None
    parameters = check_parameters(tensor.get("parameters"), where, limits)
    binary_size = parameters.get("binary_data_size")
    has_data = "data" in tensor
    if (binary_size is not None or "shared_memory_region" in parameters) and has_data:
        raise RequestRefusedError(400, f"{where} has both 'data' and binary or shared-memory data")
    if binary_size is not None:
        if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
            raise RequestRefusedError(
                400, f"{where} binary_data_size must be an integer >= 0, got {shorten(binary_size)}"
            )
        if binary_size > binary_left:
            raise RequestRefusedError(
                400, f"{where} declares {binary_size} binary bytes; the body holds {binary_left}"
            )
        if datatype in DATATYPE_BYTES and binary_size != elements * DATATYPE_BYTES[datatype]:
            raise RequestRefusedError(
                400,
                f"{where} of shape {shape} and {datatype} needs "
                f"{elements * DATATYPE_BYTES[datatype]} bytes, binary_data_size says {binary_size}",
            )
        return name, binary_size
    if has_data and tensor["data"] is CHECKED:
        _check_grpc_contents(tensor["contents"], where, datatype, elements)
    elif has_data:
        _check_data(tensor["data"], where, datatype, elements)
    elif "shared_memory_region" not in parameters:
        raise RequestRefusedError(
            400, f"{where} carries no data (no 'data', binary or shared memory)"
        )
    return name, 0


def _check_data(data: Any, where: str, datatype: str, elements: int) -> None:
    """JSON ``data``: exactly ``elements`` scalars of ``datatype`` (nested or flat)."""
    if not isinstance(data, list):
        raise RequestRefusedError(400, f"{where} 'data' must be a JSON array")
    count = 0
    low_high = INTEGER_RANGES.get(datatype)
    for value in _leaves(data, elements):
        count += 1
        if datatype == "BYTES":
            ok = isinstance(value, str)
        elif datatype == "BOOL":
            ok = isinstance(value, bool)
        elif low_high is not None:
            ok = isinstance(value, int) and not isinstance(value, bool)
            ok = ok and low_high[0] <= value <= low_high[1]
        else:  # floating point
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise RequestRefusedError(
                400, f"{where} 'data' holds {shorten(value)}, not a {datatype} value"
            )
    if count != elements:
        held = f"more than {elements}" if count > elements else str(count)
        raise RequestRefusedError(
            400, f"{where} 'data' holds {held} values; its shape needs {elements}"
        )


def check_inference_header(header: Any, binary_bytes: int, limits: RequestLimits) -> None:
    """The JSON part of an inference request (the whole body when ``binary_bytes`` is 0).

    Raises:
        RequestRefusedError: 400 naming the field and the problem.
    """
    if not isinstance(header, dict):
        raise RequestRefusedError(400, "an inference request must be a JSON object")
    request_id = header.get("id")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > limits.max_id_chars
    ):
        raise RequestRefusedError(
            400, f"request 'id' must be a string of at most {limits.max_id_chars} characters"
        )
    check_parameters(header.get("parameters"), "request", limits)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestRefusedError(400, "an inference request needs a non-empty 'inputs' list")
    if len(inputs) > limits.max_tensors:
        raise RequestRefusedError(
            400, f"{len(inputs)} inputs; at most {limits.max_tensors} accepted"
        )
    binary_left = binary_bytes
    names: set[str] = set()
    for index, tensor in enumerate(inputs):
        name, used = _check_input(tensor, index, limits, binary_left)
        if name in names:
            raise RequestRefusedError(400, f"input {shorten(name)} appears twice")
        names.add(name)
        binary_left -= used
    if binary_left:
        raise RequestRefusedError(
            400,
            f"the body holds {binary_left} binary bytes that no input's binary_data_size "
            "accounts for",
        )
    outputs = header.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or len(outputs) > limits.max_tensors:
            raise RequestRefusedError(
                400, f"'outputs' must be a list of at most {limits.max_tensors} entries"
            )
        for index, output in enumerate(outputs):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise RequestRefusedError(400, f"output {index} needs a 'name' string")
            check_parameters(output.get("parameters"), f"output {index}", limits)


def split_inference_body(
    body: bytes, header_length: str | None, limits: RequestLimits
) -> tuple[Any, int]:
    """(parsed JSON header, bytes of binary data) of an inference body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None: all JSON).
    """
    if header_length is None:
        if len(body) > limits.max_json_body_bytes:
            raise RequestRefusedError(
                413,
                f"a JSON-only body of {len(body)} bytes; at most {limits.max_json_body_bytes} "
                "(send large tensors as binary data or through shared memory)",
            )
        return parse_json(body, limits, "inference request"), 0
    length = check_header_length(header_length, len(body), limits)
    return parse_json(body[:length], limits, "inference header"), len(body) - length


def check_header_length(header_length: str, body_bytes: int, limits: RequestLimits) -> int:
    """The ``Inference-Header-Content-Length`` of a body of ``body_bytes``, checked."""
    try:
        length = int(header_length)
    except ValueError:
        raise RequestRefusedError(
            400, f"Inference-Header-Content-Length must be an integer, got {shorten(header_length)}"
        ) from None
    if not 0 < length <= body_bytes:
        raise RequestRefusedError(
            400,
            f"Inference-Header-Content-Length {length} does not fit a body of {body_bytes} bytes",
        )
    if length > limits.max_header_bytes:
        raise RequestRefusedError(
            413, f"an inference header of {length} bytes; at most {limits.max_header_bytes}"
        )
    return length


def check_inference_body(body: bytes, header_length: str | None, limits: RequestLimits) -> None:
    """``split_inference_body`` then ``check_inference_header``."""
    header, binary_bytes = split_inference_body(body, header_length, limits)
    check_inference_header(header, binary_bytes, limits)


def check_shared_memory_registration(body: bytes, kind: str, limits: RequestLimits) -> None:
    """A register request of ``kind`` ("system" or "cuda"): a JSON object whose region is a
    project region: for system shared memory the ``key`` (the ``/dev/shm`` name) must start
    with ``/`` + the project prefix and hold no other ``/``."""
    from bgblur_client.admin_key import SHARED_MEMORY_PREFIX

    request = parse_json(body, limits, "shared-memory registration") if body else {}
    if not isinstance(request, dict):
        raise RequestRefusedError(400, "a shared-memory registration must be a JSON object")
    if kind == "system":
        key = request.get("key")
        if not isinstance(key, str) or not key.startswith("/" + SHARED_MEMORY_PREFIX):
            raise RequestRefusedError(
                403,
                f"system shared-memory key {shorten(key)} refused: only regions named "
                f"/{SHARED_MEMORY_PREFIX}* are accepted",
            )
        if "/" in key[1:] or "\0" in key:
            raise RequestRefusedError(403, f"system shared-memory key {shorten(key)} refused")


# --------------------------------------------------------------------------------------------
# gRPC: a ModelInferRequest, through the same checks as an HTTP inference header
# --------------------------------------------------------------------------------------------

# The typed field of InferTensorContents that holds each datatype's values.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONTENTS_FIELDS = frozenset(_CONTENTS_FIELD.values())


def grpc_parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values (as HTTP/JSON has them)."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[key] = None if kind is None else getattr(parameter, kind)
    return values


def _check_grpc_contents(contents: Any, where: str, datatype: str, elements: int) -> None:
    """gRPC ``contents``: only ``datatype``'s field, exactly ``elements`` values, each within
    the datatype's range (Triton 2.51 truncates a uint8 of 300 to 44 silently)."""
    field = _CONTENTS_FIELD.get(datatype)
    used = {f.name for f, _ in contents.ListFields()}
    if field is None or used - {field}:
        raise RequestRefusedError(
            400, f"{where} of {datatype} carries contents in {', '.join(sorted(used))}"
        )
    values = getattr(contents, field)
    if len(values) != elements:
        raise RequestRefusedError(
            400, f"{where} contents hold {len(values)} values; its shape needs {elements}"
        )
    low_high = INTEGER_RANGES.get(datatype)
    if low_high is not None and elements:
        array = np.asarray(values, dtype=np.float64 if datatype == "UINT64" else np.int64)
        low, high = int(array.min()), int(array.max())
        if low < low_high[0] or high > low_high[1]:
            bad = low if low < low_high[0] else high
            raise RequestRefusedError(400, f"{where} contents hold {bad}, not a {datatype} value")


def grpc_infer_header(request: Any) -> tuple[dict[str, Any], int]:
    """A ``ModelInferRequest`` as the JSON header ``check_inference_header`` checks, and the
    bytes of its ``raw_input_contents``: inputs without contents or shared memory take the
    raw blobs in order, each as its ``binary_data_size``; a blob left over (a second one for
    one input, which Triton ignores) is then refused like unaccounted HTTP binary data."""
    inputs: list[dict[str, Any]] = []
    raw = list(request.raw_input_contents)
    next_raw = 0
    for tensor in request.inputs:
        parameters = grpc_parameters(tensor.parameters)
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": parameters,
        }
        if tensor.HasField("contents") and tensor.contents.ListFields():
            entry["data"], entry["contents"] = CHECKED, tensor.contents
        elif "shared_memory_region" not in parameters and next_raw < len(raw):
            parameters["binary_data_size"] = len(raw[next_raw])
            next_raw += 1
        inputs.append(entry)
    header = {
        "id": request.id or None,
        "parameters": grpc_parameters(request.parameters),
        "inputs": inputs,
        "outputs": [
            {"name": output.name, "parameters": grpc_parameters(output.parameters)}
            for output in request.outputs
        ],
    }
    return header, sum(len(blob) for blob in raw)


def check_grpc_infer_request(request: Any, limits: RequestLimits) -> None:
    """A parsed ``ModelInferRequest`` through ``check_inference_header``.

    Raises:
        RequestRefusedError: naming the field and the problem.
    """
    header, raw_bytes = grpc_infer_header(request)
    check_inference_header(header, raw_bytes, limits)


def check_grpc_shared_memory_key(key: str) -> None:
    """A gRPC system shared-memory registration's ``key``: a project region (as over HTTP)."""
    check_shared_memory_registration(json.dumps({"key": key}).encode(), "system", RequestLimits())
