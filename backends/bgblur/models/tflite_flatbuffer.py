"""A small, dependency-free reader for TensorFlow Lite model files (``.tflite``).

A ``.tflite`` file is a FlatBuffer whose schema is TensorFlow's ``tensorflow/lite/schema/
schema.fbs``. This module decodes the part of that schema a weight converter needs: the tensors
(name, shape, dtype, constant data, quantization), the operators (builtin name or custom code,
input and output tensor indices, the decoded builtin options of common operators, the raw
``custom_options`` bytes) and the inputs and outputs of each subgraph. It never executes a model.

Usage::

    model = read_tflite("selfie_segmentation.tflite")
    graph = model.subgraphs[0]
    for op in graph.operators:
        print(op.opcode, [graph.tensors[i].name for i in op.inputs], op.options)
    kernel = graph.constant(op.inputs[1])  # float32, folding a DEQUANTIZE of fp16 weights

FlatBuffer layout in brief (all little-endian): the file starts with a ``uoffset`` (uint32) to the
root table. A table starts with an ``soffset`` (int32) back to its vtable; the vtable holds
``uint16`` [vtable size, table size, field offset 0, field offset 1, ...] where an offset of 0 (or
a field past the end) means "absent, use the schema default". Fields that are strings, vectors or
tables hold a ``uoffset`` relative to the field's own position; vectors and strings start with a
uint32 element count.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Operator",
    "Quantization",
    "Subgraph",
    "TFLiteFormatError",
    "TFLiteModel",
    "Tensor",
    "parse_tflite",
    "read_tflite",
]


class TFLiteFormatError(ValueError):
    """The bytes are not a TFLite FlatBuffer this reader understands."""


# --------------------------------------------------------------------------------------------
# Schema constants (tensorflow/lite/schema/schema.fbs)
# --------------------------------------------------------------------------------------------

# TensorType -> (name, numpy dtype or None where numpy has no equivalent).
_TENSOR_TYPES: dict[int, tuple[str, np.dtype | None]] = {
    0: ("FLOAT32", np.dtype("<f4")),
    1: ("FLOAT16", np.dtype("<f2")),
    2: ("INT32", np.dtype("<i4")),
    3: ("UINT8", np.dtype("u1")),
    4: ("INT64", np.dtype("<i8")),
    5: ("STRING", None),
    6: ("BOOL", np.dtype("?")),
    7: ("INT16", np.dtype("<i2")),
    8: ("COMPLEX64", np.dtype("<c8")),
    9: ("INT8", np.dtype("i1")),
    10: ("FLOAT64", np.dtype("<f8")),
    11: ("COMPLEX128", np.dtype("<c16")),
    12: ("UINT64", np.dtype("<u8")),
    13: ("RESOURCE", None),
    14: ("VARIANT", None),
    15: ("UINT32", np.dtype("<u4")),
    16: ("UINT16", np.dtype("<u2")),
    17: ("INT4", None),
    18: ("BFLOAT16", None),
}

# BuiltinOperator codes of the operators commonly found in vision models. Others are reported as
# "BUILTIN_<code>" (the reader does not need their names to work).
_BUILTIN_OPS: dict[int, str] = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    5: "DEPTH_TO_SPACE",
    6: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    14: "LOGISTIC",
    17: "MAX_POOL_2D",
    18: "MUL",
    19: "RELU",
    21: "RELU6",
    22: "RESHAPE",
    23: "RESIZE_BILINEAR",
    25: "SOFTMAX",
    26: "SPACE_TO_DEPTH",
    28: "TANH",
    32: "CUSTOM",
    34: "PAD",
    39: "TRANSPOSE",
    40: "MEAN",
    41: "SUB",
    42: "DIV",
    43: "SQUEEZE",
    45: "STRIDED_SLICE",
    49: "SPLIT",
    53: "CAST",
    54: "PRELU",
    55: "MAXIMUM",
    57: "MINIMUM",
    60: "PADV2",
    65: "SLICE",
    67: "TRANSPOSE_CONV",
    70: "EXPAND_DIMS",
    74: "SUM",
    97: "RESIZE_NEAREST_NEIGHBOR",
    98: "LEAKY_RELU",
    114: "QUANTIZE",
    117: "HARD_SWISH",
    126: "BATCH_MATMUL",
    150: "GELU",
}
_CUSTOM = 32

_PADDING = ("SAME", "VALID")
_ACTIVATION = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH", "SIGN_BIT")

# One option field: (name, struct format of the scalar, schema default, enum names or None).
_Field = tuple[str, str, Any, Sequence[str] | None]
_PAD: _Field = ("padding", "b", 0, _PADDING)
_ACT: _Field = ("fused_activation_function", "b", 0, _ACTIVATION)
_SW: _Field = ("stride_w", "i", 0, None)
_SH: _Field = ("stride_h", "i", 0, None)

# BuiltinOptions union type -> (table name, fields in schema order). Field i is vtable slot i.
_OPTION_TABLES: dict[int, tuple[str, tuple[_Field, ...]]] = {
    1: (
        "Conv2DOptions",
        (
            _PAD,
            _SW,
            _SH,
            _ACT,
            ("dilation_w_factor", "i", 1, None),
            ("dilation_h_factor", "i", 1, None),
        ),
    ),
    2: (
        "DepthwiseConv2DOptions",
        (
            _PAD,
            _SW,
            _SH,
            ("depth_multiplier", "i", 0, None),
            _ACT,
            ("dilation_w_factor", "i", 1, None),
            ("dilation_h_factor", "i", 1, None),
        ),
    ),
    5: (
        "Pool2DOptions",
        (_PAD, _SW, _SH, ("filter_width", "i", 0, None), ("filter_height", "i", 0, None), _ACT),
    ),
    9: ("SoftmaxOptions", (("beta", "f", 0.0, None),)),
    10: ("ConcatenationOptions", (("axis", "i", 0, None), _ACT)),
    11: ("AddOptions", (_ACT, ("pot_scale_int16", "?", True, None))),
    15: (
        "ResizeBilinearOptions",
        (
            ("new_height", "i", 0, None),
            ("new_width", "i", 0, None),
            ("align_corners", "?", False, None),
            ("half_pixel_centers", "?", False, None),
        ),
    ),
    21: ("MulOptions", (_ACT,)),
    27: ("ReducerOptions", (("keep_dims", "?", False, None),)),
    28: ("SubOptions", (_ACT, ("pot_scale_int16", "?", True, None))),
    49: ("TransposeConvOptions", (_PAD, _SW, _SH, _ACT)),
    74: (
        "ResizeNearestNeighborOptions",
        (("align_corners", "?", False, None), ("half_pixel_centers", "?", False, None)),
    ),
}


# --------------------------------------------------------------------------------------------
# FlatBuffer primitives
# --------------------------------------------------------------------------------------------


class _Table:
    """A view of one FlatBuffer table: typed access to its fields by vtable slot."""

    __slots__ = ("_buf", "_pos", "_vt", "_vt_len")

    def __init__(self, buf: bytes, pos: int) -> None:
        if not 0 <= pos <= len(buf) - 4:
            raise TFLiteFormatError(f"table offset {pos} outside the {len(buf)}-byte buffer")
        self._buf = buf
        self._pos = pos
        self._vt = pos - struct.unpack_from("<i", buf, pos)[0]
        if not 0 <= self._vt <= len(buf) - 4:
            raise TFLiteFormatError(f"vtable offset {self._vt} outside the buffer")
        self._vt_len = struct.unpack_from("<H", buf, self._vt)[0]

    def _field(self, slot: int) -> int | None:
        """Absolute position of field ``slot``, or None when it is absent."""
        entry = 4 + 2 * slot
        if entry >= self._vt_len:
            return None
        off = struct.unpack_from("<H", self._buf, self._vt + entry)[0]
        return self._pos + off if off else None

    def _deref(self, pos: int) -> int:
        return pos + struct.unpack_from("<I", self._buf, pos)[0]

    def scalar(self, slot: int, fmt: str, default: Any) -> Any:
        pos = self._field(slot)
        return default if pos is None else struct.unpack_from("<" + fmt, self._buf, pos)[0]

    def string(self, slot: int) -> str | None:
        raw = self.vector(slot, np.dtype("u1"))
        return None if raw is None else raw.tobytes().decode("utf-8", errors="replace")

    def vector(self, slot: int, dtype: np.dtype) -> np.ndarray | None:
        """A vector of scalars as a (copied) numpy array, or None when absent."""
        pos = self._field(slot)
        if pos is None:
            return None
        start = self._deref(pos)
        n = struct.unpack_from("<I", self._buf, start)[0]
        if start + 4 + n * dtype.itemsize > len(self._buf):
            raise TFLiteFormatError("vector runs past the end of the buffer")
        return np.frombuffer(self._buf, dtype=dtype, count=n, offset=start + 4).copy()

    def table(self, slot: int) -> _Table | None:
        pos = self._field(slot)
        return None if pos is None else _Table(self._buf, self._deref(pos))

    def tables(self, slot: int) -> list[_Table]:
        """A vector of tables (empty when absent)."""
        pos = self._field(slot)
        if pos is None:
            return []
        start = self._deref(pos)
        n = struct.unpack_from("<I", self._buf, start)[0]
        return [_Table(self._buf, self._deref(start + 4 + 4 * i)) for i in range(n)]


def _ints(values: np.ndarray | None) -> tuple[int, ...]:
    return () if values is None else tuple(int(v) for v in values)


# --------------------------------------------------------------------------------------------
# Decoded model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: ``real = (q - zero_point) * scale`` along an axis."""

    scale: np.ndarray  # float32, one per channel (or one)
    zero_point: np.ndarray  # int64, same length as scale
    quantized_dimension: int

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """``q`` (integer array) -> float32 array."""
        shape = [1] * q.ndim
        if self.scale.size > 1:
            shape[self.quantized_dimension] = self.scale.size
        scale = self.scale.reshape(shape)
        zero = self.zero_point.reshape(shape) if self.zero_point.size else 0
        return ((q.astype(np.float64) - zero) * scale).astype(np.float32)


@dataclass(frozen=True)
class Tensor:
    """One tensor of a subgraph.

    Attributes:
        index: position in ``Subgraph.tensors`` (what operators refer to).
        name: name given by the converter (e.g. ``"conv2d_3/Kernel"``).
        shape: static shape (``()`` for a scalar; dynamic dims appear as -1 in shape_signature).
        type_name: TFLite TensorType name (``"FLOAT32"``, ``"FLOAT16"``, ``"INT8"``...).
        data: the constant value (shaped, in the stored dtype) or None for an activation tensor.
            Types numpy cannot represent (STRING, INT4, BFLOAT16...) come as raw uint8 bytes.
        quantization: affine quantization parameters, or None.
    """

    index: int
    name: str
    shape: tuple[int, ...]
    type_name: str
    buffer: int
    data: np.ndarray | None
    quantization: Quantization | None = None
    shape_signature: tuple[int, ...] = ()

    @property
    def dtype(self) -> np.dtype | None:
        """numpy dtype of the element type (None where numpy has none)."""
        for name, dtype in _TENSOR_TYPES.values():
            if name == self.type_name:
                return dtype
        return None

    @property
    def is_constant(self) -> bool:
        return self.data is not None


@dataclass(frozen=True)
class Operator:
    """One operator (node) of a subgraph.

    Attributes:
        index: position in ``Subgraph.operators`` (execution order).
        opcode: builtin operator name (``"CONV_2D"``) or, for custom operators, the custom code
            (``"Convolution2DTransposeBias"``).
        is_custom: whether ``opcode`` is a custom code.
        builtin_code: the BuiltinOperator number (32 for custom operators).
        version: operator version from the OperatorCode table.
        inputs, outputs: tensor indices; -1 marks an omitted optional input.
        options_type: name of the builtin options table (``"Conv2DOptions"``), ``""`` if none,
            ``"BuiltinOptions#N"`` for a table this reader does not decode.
        options: decoded builtin options (enums as names, e.g. ``padding="SAME"``).
        custom_options: raw ``custom_options`` bytes (custom operators), or None.
    """

    index: int
    opcode: str
    is_custom: bool
    builtin_code: int
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options_type: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    custom_options: bytes | None = None


@dataclass(frozen=True)
class Subgraph:
    """A graph: tensors, operators in execution order, and the graph inputs and outputs."""

    name: str
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def tensor(self, name: str) -> Tensor:
        """The tensor called ``name`` (KeyError if none)."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def producer(self, tensor_index: int) -> Operator | None:
        """The operator writing ``tensor_index``, or None (graph input or constant)."""
        for op in self.operators:
            if tensor_index in op.outputs:
                return op
        return None

    def constant(self, tensor_index: int) -> np.ndarray:
        """The float32 value of a constant tensor, dequantized.

        Handles constant float tensors, affine-quantized integer constants, and tensors computed
        by a ``DEQUANTIZE`` operator from a constant (how fp16-weight models store their weights:
        an FLOAT16 constant feeding DEQUANTIZE). Integer tensors without quantization come back
        unchanged (e.g. INT32 shape operands).

        Raises:
            ValueError: the tensor is not a constant (it depends on a graph input).
        """
        t = self.tensors[tensor_index]
        if t.data is not None:
            if (
                t.quantization is not None
                and t.data.dtype.kind in "iu"
                and t.quantization.scale.size
            ):
                return t.quantization.dequantize(t.data)
            if t.data.dtype.kind == "f":
                return t.data.astype(np.float32)
            return t.data
        op = self.producer(tensor_index)
        if op is not None and op.opcode == "DEQUANTIZE":
            return self.constant(op.inputs[0]).astype(np.float32)
        raise ValueError(f"tensor {tensor_index} ({t.name!r}) is not a constant")


@dataclass(frozen=True)
class TFLiteModel:
    """A decoded ``.tflite`` file."""

    version: int
    description: str
    subgraphs: list[Subgraph]
    metadata: dict[str, bytes] = field(default_factory=dict)

    @property
    def main(self) -> Subgraph:
        """The primary subgraph (index 0), the one an interpreter runs."""
        return self.subgraphs[0]


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _read_buffer(buf: bytes, table: _Table) -> bytes | None:
    """Bytes of a Buffer table: inline ``data`` or, in >2 GB models, an ``offset``/``size``."""
    data = table.vector(0, np.dtype("u1"))
    if data is not None and data.size:
        return data.tobytes()
    offset, size = table.scalar(1, "Q", 0), table.scalar(2, "Q", 0)
    if offset > 1 and size:  # offset 1 is the "not yet written" placeholder of the converter
        if offset + size > len(buf):
            raise TFLiteFormatError("external buffer runs past the end of the file")
        return buf[offset : offset + size]
    return None


def _read_quantization(table: _Table | None) -> Quantization | None:
    if table is None:
        return None
    scale = table.vector(2, np.dtype("<f4"))
    if scale is None or scale.size == 0:
        return None
    zero = table.vector(3, np.dtype("<i8"))
    return Quantization(
        scale=scale,
        zero_point=np.zeros(scale.size, np.int64) if zero is None else zero,
        quantized_dimension=table.scalar(6, "i", 0),
    )


def _read_tensor(index: int, table: _Table, buffers: list[bytes | None]) -> Tensor:
    type_code = table.scalar(1, "b", 0)
    type_name, dtype = _TENSOR_TYPES.get(type_code, (f"TYPE_{type_code}", None))
    shape = _ints(table.vector(0, np.dtype("<i4")))
    buffer_index = table.scalar(2, "I", 0)
    raw = buffers[buffer_index] if buffer_index < len(buffers) else None
    data: np.ndarray | None = None
    if raw is not None:
        if dtype is None:
            data = np.frombuffer(raw, np.uint8).copy()
        else:
            data = np.frombuffer(raw, dtype).copy()
            if data.size == int(np.prod(shape, dtype=np.int64)):
                data = data.reshape(shape)
    return Tensor(
        index=index,
        name=table.string(3) or "",
        shape=shape,
        type_name=type_name,
        buffer=buffer_index,
        data=data,
        quantization=_read_quantization(table.table(4)),
        shape_signature=_ints(table.vector(7, np.dtype("<i4"))),
    )


def _read_options(union_type: int, table: _Table | None) -> tuple[str, dict[str, Any]]:
    if union_type == 0:
        return "", {}
    spec = _OPTION_TABLES.get(union_type)
    if spec is None:
        return f"BuiltinOptions#{union_type}", {}
    name, fields = spec
    options: dict[str, Any] = {}
    for slot, (fname, fmt, default, enum) in enumerate(fields):
        value = default if table is None else table.scalar(slot, fmt, default)
        if enum is not None:
            value = enum[value] if 0 <= value < len(enum) else value
        options[fname] = value
    return name, options


def _read_operator(
    index: int, table: _Table, opcodes: list[tuple[str, bool, int, int]], buf: bytes
) -> Operator:
    opcode_index = table.scalar(0, "I", 0)
    if opcode_index >= len(opcodes):
        raise TFLiteFormatError(f"operator {index} refers to missing opcode {opcode_index}")
    opcode, is_custom, builtin_code, version = opcodes[opcode_index]
    options_type, options = _read_options(table.scalar(3, "B", 0), table.table(4))
    custom = table.vector(5, np.dtype("u1"))
    custom_options = None if custom is None else custom.tobytes()
    large_offset, large_size = table.scalar(9, "Q", 0), table.scalar(10, "Q", 0)
    if custom_options is None and large_offset and large_size:
        custom_options = buf[large_offset : large_offset + large_size]
    return Operator(
        index=index,
        opcode=opcode,
        is_custom=is_custom,
        builtin_code=builtin_code,
        version=version,
        inputs=_ints(table.vector(1, np.dtype("<i4"))),
        outputs=_ints(table.vector(2, np.dtype("<i4"))),
        options_type=options_type,
        options=options,
        custom_options=custom_options,
    )


def _read_opcode(table: _Table) -> tuple[str, bool, int, int]:
    # builtin_code (slot 3, int32) supersedes deprecated_builtin_code (slot 0, int8, < 127).
    code = max(table.scalar(0, "b", 0), table.scalar(3, "i", 0))
    version = table.scalar(2, "i", 1)
    if code == _CUSTOM:
        return table.string(1) or "", True, code, version
    return _BUILTIN_OPS.get(code, f"BUILTIN_{code}"), False, code, version


def parse_tflite(buf: bytes) -> TFLiteModel:
    """Decode the bytes of a ``.tflite`` file.

    Raises:
        TFLiteFormatError: not a TFLite FlatBuffer (bad identifier, offsets out of range).
    """
    if len(buf) < 8:
        raise TFLiteFormatError("file too short to be a TFLite model")
    if buf[4:8] != b"TFL3":
        raise TFLiteFormatError(f"file identifier is {buf[4:8]!r}, expected b'TFL3'")
    root = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    buffers = [_read_buffer(buf, t) for t in root.tables(4)]
    opcodes = [_read_opcode(t) for t in root.tables(1)]
    subgraphs = []
    for sg in root.tables(2):
        tensors = [_read_tensor(i, t, buffers) for i, t in enumerate(sg.tables(0))]
        operators = [_read_operator(i, t, opcodes, buf) for i, t in enumerate(sg.tables(3))]
        subgraphs.append(
            Subgraph(
                name=sg.string(4) or "",
                tensors=tensors,
                operators=operators,
                inputs=_ints(sg.vector(1, np.dtype("<i4"))),
                outputs=_ints(sg.vector(2, np.dtype("<i4"))),
            )
        )
    if not subgraphs:
        raise TFLiteFormatError("model has no subgraph")
    metadata = {}
    for meta in root.tables(6):  # Metadata {name: string, buffer: uint}
        b = meta.scalar(1, "I", 0)
        metadata[meta.string(0) or ""] = (buffers[b] if b < len(buffers) else None) or b""
    return TFLiteModel(
        version=root.scalar(0, "I", 0),
        description=root.string(3) or "",
        subgraphs=subgraphs,
        metadata=metadata,
    )


def read_tflite(path: str | Path) -> TFLiteModel:
    """Read and decode a ``.tflite`` file (see :func:`parse_tflite`)."""
    return parse_tflite(Path(path).read_bytes())
