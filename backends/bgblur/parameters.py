"""Pipeline settings: the post-processing parameters a request may override, with validation.

Defaults follow CV-CUDA's segmentation sample (``samples/segmentation/python``): joint bilateral
refinement with diameter 5, sigma_color 50, sigma_space 1; background blurred by a 15x15 Gaussian
with sigma 5 at the model's working resolution and upscaled bilinearly; a soft mask
(probability x 255, no threshold). One default differs: the blur is halo-free (``halo_free``:
the background is blurred from background pixels only); ``halo_free=false`` gives the sample's
whole-frame blur bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bgblur.errors import InvalidInputError

# Largest frame accepted: 8K UHD in either orientation. Documented in README ("Limits").
MAX_FRAME_LONG_SIDE = 7680
MAX_FRAME_SHORT_SIDE = 4320
# Largest FRAMES tensor one request may carry (bytes): 8 frames of 4K UHD RGB.
MAX_REQUEST_BYTES = 8 * 3840 * 2160 * 3
# Smallest sigma a request may ask for (BlurParams).
MIN_SIGMA = 0.01
# Error messages echo at most this much of a value a client sent.
ECHO_CHARS = 64
# Values of BlurParams.background.
BACKGROUNDS = ("blur", "color", "image")
# BlurParams.background_color by default: a neutral mid grey (no colour cast on the edges).
DEFAULT_BACKGROUND_COLOR = (128, 128, 128)
# BlurParams' type annotation of an RGB colour (fields' types are strings here).
COLOR_TYPE = "tuple[int, int, int]"


def shorten(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (an error never echoes a whole value)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


@dataclass(frozen=True)
class BlurParams:
    """Post-processing parameters. Every field can be overridden per request by name.

    Attributes:
        blur_ksize: Gaussian kernel size of the background blur (odd, 1..99), applied at the
            blur working resolution (``blur_working_hw``), like CV-CUDA's sample.
        blur_sigma: Gaussian sigma in pixels of the working resolution (0.01 <= sigma <= 100).
        bilateral_diameter: window diameter of the joint bilateral refinement of the mask
            (0..31; 0 or 1 switch the refinement off).
        bilateral_sigma_color: colour sigma on the grey guide, in grey levels (0.01 <= s <= 1000).
        bilateral_sigma_space: spatial sigma in pixels (0.01 <= s <= 100).
        (A sigma below 0.01 squares to a denormal or zero in float32: the weights divide by
        zero and the mask turns NaN; 0.01 already weighs the centre alone.)
        soft_mask: True: mask = probability x 255 (soft edges). False: 255 where the
            probability >= ``mask_threshold``, else 0.
        mask_threshold: threshold of the hard mask (0 < t < 1).
        halo_free: True: the blurred background is a mask-weighted, normalised blur of the
            background pixels alone (no glow of the person's colours around them;
            ``bgblur.ops.background``). False: the whole frame is blurred (CV-CUDA's sample).
        background: what replaces the background: ``"blur"`` (the blurred frame),
            ``"color"`` (``background_color``) or ``"image"`` (the request's ``BACKGROUND``
            tensor, scaled to cover the frame and centre-cropped).
        background_color: ``(R, G, B)``, each 0..255, of ``background="color"``; a request
            sends it as the string ``"R,G,B"``.
    """

    blur_ksize: int = 15
    blur_sigma: float = 5.0
    bilateral_diameter: int = 5
    bilateral_sigma_color: float = 50.0
    bilateral_sigma_space: float = 1.0
    soft_mask: bool = True
    mask_threshold: float = 0.5
    halo_free: bool = True
    background: str = "blur"
    background_color: tuple[int, int, int] = DEFAULT_BACKGROUND_COLOR

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                ok = isinstance(value, bool)
            elif f.type == "str":
                ok = isinstance(value, str)
            elif f.type == COLOR_TYPE:
                ok = isinstance(value, tuple) and len(value) == 3
                ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            else:
                ok = isinstance(value, int if f.type == "int" else (int, float))
                ok = ok and not isinstance(value, bool)
            if not ok:
                raise InvalidInputError(
                    f"parameter {f.name!r} must be of type {f.type}, got {shorten(value)}"
                )
            if f.type == "float":
                object.__setattr__(self, f.name, float(value))
        _check(
            self.blur_ksize % 2 == 1 and 1 <= self.blur_ksize <= 99,
            "blur_ksize",
            self.blur_ksize,
            "an odd integer in [1, 99]",
        )
        _check(
            MIN_SIGMA <= self.blur_sigma <= 100.0, "blur_sigma", self.blur_sigma, "in [0.01, 100]"
        )
        _check(
            0 <= self.bilateral_diameter <= 31,
            "bilateral_diameter",
            self.bilateral_diameter,
            "an integer in [0, 31]",
        )
        _check(
            MIN_SIGMA <= self.bilateral_sigma_color <= 1000.0,
            "bilateral_sigma_color",
            self.bilateral_sigma_color,
            "in [0.01, 1000]",
        )
        _check(
            MIN_SIGMA <= self.bilateral_sigma_space <= 100.0,
            "bilateral_sigma_space",
            self.bilateral_sigma_space,
            "in [0.01, 100]",
        )
        _check(0.0 < self.mask_threshold < 1.0, "mask_threshold", self.mask_threshold, "in (0, 1)")
        _check(
            self.background in BACKGROUNDS,
            "background",
            self.background,
            f"one of {', '.join(BACKGROUNDS)}",
        )
        _check(
            all(0 <= v <= 255 for v in self.background_color),
            "background_color",
            self.background_color,
            "R,G,B with each of R, G, B in [0, 255]",
        )

    def with_overrides(self, overrides: Mapping[str, Any]) -> BlurParams:
        """A copy with ``overrides`` applied (values may be strings, as in Triton parameters).

        Raises:
            InvalidInputError: an unknown name, a value of the wrong type, or out of range.
        """
        if not overrides:
            return self
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for name, raw in overrides.items():
            if name in STREAM_PARAMETERS:  # another step's (background_blur_stream)
                continue
            if name not in fields:
                raise InvalidInputError(
                    f"unknown parameter {shorten(name)}; known parameters: "
                    f"{', '.join(sorted([*fields, *STREAM_PARAMETERS]))}"
                )
            changes[name] = _coerce(name, raw, fields[name].type)
        return dataclasses.replace(self, **changes)


# Parameters of the background_blur_stream ensemble's temporal step; the other steps (and the
# stateless ensemble, which has no such step) accept and ignore them.
TEMPORAL_SMOOTHING = "temporal_smoothing"
STREAM_PARAMETERS = (TEMPORAL_SMOOTHING,)
# How much of a stream's mask history a frame keeps where it barely changed (0: none, off).
DEFAULT_TEMPORAL_SMOOTHING = 0.6
MAX_TEMPORAL_SMOOTHING = 0.95


def temporal_smoothing_from(overrides: Mapping[str, Any]) -> float:
    """The request's ``temporal_smoothing`` (0 <= s <= 0.95; ``DEFAULT_TEMPORAL_SMOOTHING``
    when absent); the other parameters are left to the steps that take them.

    Raises:
        InvalidInputError: not a number, or out of range.
    """
    if TEMPORAL_SMOOTHING not in overrides:
        return DEFAULT_TEMPORAL_SMOOTHING
    value = _coerce(TEMPORAL_SMOOTHING, overrides[TEMPORAL_SMOOTHING], "float")
    _check(
        0.0 <= value <= MAX_TEMPORAL_SMOOTHING,
        TEMPORAL_SMOOTHING,
        value,
        f"in [0, {MAX_TEMPORAL_SMOOTHING}] (0 turns smoothing off)",
    )
    return value


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise InvalidInputError(
            f"parameter {shorten(name)} must be {expected}, got {shorten(value)}"
        )


def _coerce(name: str, raw: Any, type_name: str) -> Any:
    """Convert a parameter value (native JSON type or string) to the field's type."""
    if type_name == COLOR_TYPE:
        return _coerce_color(name, raw)
    try:
        if type_name == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "false", "0", "no"):
                return raw.lower() in ("true", "1", "yes")
            if isinstance(raw, int) and raw in (0, 1):
                return bool(raw)
            raise ValueError
        if type_name == "int":
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float):
                if not raw.is_integer():
                    raise ValueError
                return int(raw)
            return int(raw)
        if type_name == "str":
            if not isinstance(raw, str):
                raise ValueError
            return raw.strip().lower()
        if type_name == "float":
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unhandled field type {type_name}")
    raise InvalidInputError(
        f"parameter {shorten(name)} must be of type {type_name}, got {shorten(raw)}"
    )


def _coerce_color(name: str, raw: Any) -> tuple[int, int, int]:
    """``"R,G,B"`` (or a sequence of three integers) -> ``(R, G, B)``; the range is checked by
    ``BlurParams``."""
    parts = raw.split(",") if isinstance(raw, str) else raw
    try:
        values = tuple(parts)
    except TypeError:
        values = ()
    if len(values) == 3:
        out = []
        for v in values:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                break
            try:
                out.append(int(v.strip()) if isinstance(v, str) else int(v))
            except (TypeError, ValueError):
                break
        if len(out) == 3:
            return out[0], out[1], out[2]
    raise InvalidInputError(
        f"parameter {shorten(name)} must be R,G,B (three integers in [0, 255]), got {shorten(raw)}"
    )


def validate_frames_shape(shape: tuple[int, ...], dtype_name: str, tensor: str = "FRAMES") -> None:
    """Check a frames tensor: uint8 ``[B, H, W, 3]`` with sizes within the documented limits.

    Raises:
        InvalidInputError: naming the tensor, what was expected and what came.
    """
    if dtype_name != "uint8":
        raise InvalidInputError(f"{tensor} must be uint8, got {dtype_name}")
    if len(shape) != 4:
        raise InvalidInputError(
            f"{tensor} must have shape [batch, height, width, 3], got {list(shape)}"
        )
    batch, height, width, channels = shape
    if channels != 3:
        raise InvalidInputError(f"{tensor} must have 3 channels (RGB), got {channels}")
    if batch < 1 or height < 1 or width < 1:
        raise InvalidInputError(f"{tensor} must not be empty, got shape {list(shape)}")
    if max(height, width) > MAX_FRAME_LONG_SIDE or min(height, width) > MAX_FRAME_SHORT_SIDE:
        raise InvalidInputError(
            f"{tensor} frame of {width}x{height} exceeds the maximum "
            f"{MAX_FRAME_LONG_SIDE}x{MAX_FRAME_SHORT_SIDE} (either orientation)"
        )
    nbytes = batch * height * width * channels
    if nbytes > MAX_REQUEST_BYTES:
        raise InvalidInputError(
            f"{tensor} of {nbytes} bytes exceeds the per-request maximum of {MAX_REQUEST_BYTES} "
            "bytes; send fewer frames per request"
        )


# Triton's CUDA memory pool per GPU (``--cuda-memory-pool-byte-size``), MiB: the tensors passed
# between the ensemble's steps live there. When it is full Triton falls back to pinned host
# memory and throughput collapses (512 MiB overflows at 16 clients x 8 1080p frames:
# docs/benchmarks.md). 4 GiB holds 16 x 8 1080p or 4 x 8 4K requests in flight; reserved at
# start.
CUDA_POOL_MB = 4096
