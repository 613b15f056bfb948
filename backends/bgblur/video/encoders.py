"""H.264 encoder choice (NVENC or libx264) and muxing of pre-encoded H.264 into a container.

Shared by the client's video writer (``bgblur_client.video``) and the server's fragmented-MP4
writer (:mod:`bgblur.video.transcode`):

- :func:`choose_encoder` picks ``"nvenc"`` (PyNvVideoCodec, the GPU's video encoder) or ``"x264"``
  (libx264 through PyAV, on the CPU). NVENC is used only where an encoder session really opens:
  data-centre GPUs such as the H100/H200 have NVDEC but no NVENC (opening one fails), whereas
  T4, L4, A10 and L40S have it.
- :class:`NvencH264Encoder` encodes RGB frames (NumPy or CuPy) into H.264 Annex-B access units.
- :class:`H264PacketMuxer` muxes Annex-B access units into a PyAV output container as one packet
  per frame, with the source's timestamps, rotation and colour tags (as the libx264 path does).

What the NVENC code relies on (PyNvVideoCodec 2.x; API reference "Encoder" at
docs.nvidia.com/video-technologies/pynvvideocodec/pynvc-api-reference/encoder.html and the
docstrings and samples shipped in the 2.2.4 wheel, ``samples/basic/encode.py``):

- ``CreateEncoder(width, height, fmt, usecpuinputbuffer, **options)`` with string-valued options
  (``codec``, ``preset``, ``tuning_info``, ``gop``, ``idrperiod``, ``bf``, ``fps``, ``rc``,
  ``cq``, ``repeatspspps``, ``gpu_id``); "ABGR" input is always supported.
- ``Encode(frame)``: a host frame is a NumPy uint8 buffer of ``width * height * 4`` bytes; a
  device frame is any object with ``__cuda_array_interface__`` (a CuPy ``[H, W, 4]`` array).
  2.x returns a list of dicts whose ``"data"`` is the bitstream of one frame (1.x returned the
  bytes themselves; both are accepted). Any output is split into access units here
  (:func:`split_access_units`), so one packet is one frame whatever the binding returns.
- ``EndEncode()`` flushes (same return types).
- ``GetSequenceParams()`` (2.x; required) gives the SPS/PPS before the first frame: the
  container's header needs them (:func:`add_h264_mux_stream`).
- ``GetNumBFrames()`` (2.x, optional): checked to be 0.
- Byte order: ``NV_ENC_BUFFER_FORMAT_ABGR`` is "8 bit Packed A8B8G8R8 ... a 32-bit word with R in
  the lowest 8 bits, G in the next 8 bits, B in the 8 bits after that and A in the highest 8
  bits" (``nvEncodeAPI.h``): on a little-endian machine the bytes in memory are R, G, B, A, i.e.
  our RGB frames with an alpha byte appended.
- Colour: NVENC converts RGB input to YUV 4:2:0 itself and exposes no option for the matrix.
  FFmpeg's ``nvenc.c`` tags packed-RGB input as ``colourMatrix = AVCOL_SPC_BT470BG`` (BT.601)
  with ``videoFullRangeFlag = 0``, i.e. BT.601 limited range; we rely on that and tag the stream
  the same way (:data:`NVENC_COLORSPACE`, :data:`NVENC_COLOR_RANGE`), keeping the source's
  primaries and transfer (they describe the RGB values, which the blur does not change; BT.709
  when the source declares none, since MP4 writes no colour box unless all three are set).
  PyNvVideoCodec writes no colour description into the SPS, so the container's tags are the
  ones players see.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from bgblur.video.cuda_context import primary_context, thread_context_kept
from bgblur_client.encoding import DEFAULT_PRESET, ENCODER_CHOICES, X264_PRESETS

LOG = logging.getLogger("bgblur.video")

# FFmpeg AVColorSpace / AVColorRange codes of what NVENC produces from RGB input (see above).
NVENC_COLORSPACE = 5  # AVCOL_SPC_BT470BG: the BT.601 matrix
NVENC_COLOR_RANGE = 1  # AVCOL_RANGE_MPEG: limited range
NVENC_PRESET = "P4"
# The NVENC preset (P1 fastest .. P7 best) each libx264 preset (X264_PRESETS, shared with the
# client: bgblur_client.encoding) maps to.
NVENC_PRESETS: dict[str, str] = {
    "ultrafast": "P1",
    "superfast": "P1",
    "veryfast": "P2",
    "faster": "P3",
    "fast": "P3",
    "medium": NVENC_PRESET,
    "slow": "P5",
    "slower": "P6",
    "veryslow": "P7",
    "placebo": "P7",
}
# Primaries and transfer for a source that declares none: BT.709 (sRGB's). MP4/MOV write their
# colour box ("colr", which carries the matrix and range) only when all three are specified.
_FALLBACK_PRIMARIES = _FALLBACK_TRC = 1
_UNSPECIFIED = 2

# gpu index -> None when an NVENC session opened there, else why not (the probe's result).
_NVENC_PROBES: dict[int, str | None] = {}
_PROBE_LOCK = threading.Lock()  # server sessions run on threads: one probe per GPU

_TOO_OLD = "PyNvVideoCodec 2.x is needed (its encoder has no GetSequenceParams)"
_START_CODE = b"\x00\x00\x01"
_NAL_SLICE, _NAL_IDR, _NAL_SEI, _NAL_SPS, _NAL_PPS, _NAL_AUD = 1, 5, 6, 7, 8, 9


def choose_encoder(
    requested: str, *, width: int, height: int, rate: Fraction | float, gpu: int = 0
) -> tuple[str, str]:
    """``(kind, reason)``: the H.264 encoder to use, ``"nvenc"`` or ``"x264"``, and why.

    Args:
        requested: ``"auto"`` (NVENC when an encoder session opens on ``gpu``, else libx264),
            ``"nvenc"`` (NVENC or an error) or ``"x264"``.
        width: Frame width of the video (the probe session has this size).
        height: Frame height.
        rate: Frame rate.
        gpu: CUDA device index for NVENC.

    Raises:
        ValueError: ``requested`` is not one of :data:`ENCODER_CHOICES`.
        RuntimeError: ``"nvenc"`` was requested and cannot be used here (the message says why).
    """
    if requested not in ENCODER_CHOICES:
        raise ValueError(f"encoder must be one of {ENCODER_CHOICES}, got {requested!r}")
    if requested == "x264":
        return "x264", "requested"
    problem = nvenc_unavailable_reason(width=width, height=height, rate=rate, gpu=gpu)
    if problem is None:
        return "nvenc", f"NVENC available on GPU {gpu}"
    if requested == "nvenc":
        raise RuntimeError(f"NVENC encoder requested but unavailable: {problem}")
    return "x264", problem


def nvenc_unavailable_reason(
    *, width: int, height: int, rate: Fraction | float, gpu: int = 0
) -> str | None:
    """None when an NVENC H.264 session opens on ``gpu``, else why not (cached per GPU)."""
    with _PROBE_LOCK:
        if gpu not in _NVENC_PROBES:
            _NVENC_PROBES[gpu] = _probe_nvenc(width, height, rate, gpu)
        return _NVENC_PROBES[gpu]


def _probe_nvenc(width: int, height: int, rate: Fraction | float, gpu: int) -> str | None:
    try:
        nvc = _import_pynvvideocodec()
    except ModuleNotFoundError:
        reason: str | None = "PyNvVideoCodec not installed"
    except Exception as exc:  # present but broken (no driver, wrong CUDA): say what happened
        reason = f"PyNvVideoCodec cannot be imported: {exc}"
    else:
        reason = None
        try:
            with thread_context_kept("the NVENC probe"):
                probe = nvc.CreateEncoder(
                    _even(width), _even(height), "ABGR", True, **_nvenc_options(rate, 30, 23, gpu)
                )
        except Exception as exc:
            reason = f"NVENC unavailable on GPU {gpu}: {exc}"
        else:
            if not hasattr(probe, "GetSequenceParams"):
                reason = _TOO_OLD
            with thread_context_kept("closing the NVENC probe"):
                _close_encoder(probe)
    return reason


def _import_pynvvideocodec() -> Any:
    import PyNvVideoCodec

    return PyNvVideoCodec


def _even(size: int) -> int:
    return max(2, size - size % 2)


def _nvenc_options(
    rate: Fraction | float, gop: int, quality: int, gpu: int, preset: str = NVENC_PRESET
) -> dict[str, Any]:
    """CreateEncoder options (PyNvVideoCodec takes every value as a string, except the CUDA
    context and stream: the device's primary context and its legacy stream, never a context of
    the binding's own; see :mod:`bgblur.video.cuda_context`)."""
    return {
        "cudacontext": primary_context(gpu),
        "cudastream": 0,
        "codec": "h264",
        "preset": preset,
        "tuning_info": "high_quality",
        "gpu_id": str(gpu),
        "fps": str(max(1, round(float(rate)))),
        "gop": str(gop),
        "idrperiod": str(gop),  # every GOP starts with an IDR frame: an MP4 fragment boundary
        "bf": "0",  # no B-frames: packets come out in display order, pts == dts
        "repeatspspps": "1",  # SPS/PPS before every IDR: each fragment decodes on its own
        "rc": "vbr",
        "cq": str(quality),  # constant-quality target, 0..51 like libx264's CRF (not equal to it)
    }


def _close_encoder(encoder: Any) -> None:
    """End an NVENC session (PyNvVideoCodec frees it when the object goes; flush first)."""
    try:
        encoder.EndEncode()
    except Exception:  # nothing was encoded, or the session is already gone
        LOG.debug("EndEncode on close failed", exc_info=True)


class NvencH264Encoder:
    """H.264 through NVENC (PyNvVideoCodec): RGB ``[H, W, 3]`` uint8 frames -> access units.

    Args:
        width: Encoded width (even).
        height: Encoded height (even).
        rate: Frame rate (NVENC's rate control uses it; timestamps are the muxer's).
        gop: Frames from one IDR frame to the next.
        quality: Constant-quality target 0..51 (lower: better and larger), the CRF's analogue.
        gpu: CUDA device index.
        preset: A libx264 preset name (:data:`X264_PRESETS`), taken as its NVENC preset
            (:data:`NVENC_PRESETS`).
        device_input: True to take frames from GPU memory (CuPy; the RGBA staging buffer is
            on the GPU), False for host memory (NumPy). Frames of the other kind are copied
            across.

    Raises:
        RuntimeError: PyNvVideoCodec is missing or no encoder session opens.
    """

    def __init__(
        self,
        width: int,
        height: int,
        *,
        rate: Fraction | float,
        gop: int,
        quality: int = 23,
        gpu: int = 0,
        device_input: bool = False,
        preset: str = DEFAULT_PRESET,
    ) -> None:
        if preset not in NVENC_PRESETS:
            raise ValueError(f"preset must be one of {X264_PRESETS}, got {preset!r}")
        if width % 2 or height % 2:
            raise ValueError(f"H.264 4:2:0 needs an even width and height, got {width}x{height}")
        try:
            nvc = _import_pynvvideocodec()
        except Exception as exc:
            raise RuntimeError(f"PyNvVideoCodec cannot be imported: {exc}") from exc
        self.width, self.height = width, height
        self._device_input = device_input
        self._cupy: Any = None
        if device_input:
            import cupy

            self._cupy = cupy
            with cupy.cuda.Device(gpu):
                # One RGBA frame, reused; alpha stays 255. Bytes R,G,B,A = NVENC's "ABGR".
                self._rgba: Any = cupy.full((height, width, 4), 255, dtype=cupy.uint8)
        else:
            self._rgba = np.full((height, width, 4), 255, dtype=np.uint8)
        self._gpu = gpu
        try:
            with thread_context_kept("opening the NVENC encoder"):
                self._encoder = nvc.CreateEncoder(
                    width,
                    height,
                    "ABGR",
                    not device_input,
                    **_nvenc_options(rate, gop, quality, gpu, NVENC_PRESETS[preset]),
                )
        except Exception as exc:
            raise RuntimeError(f"NVENC unavailable on GPU {gpu}: {exc}") from exc
        b_frames = getattr(self._encoder, "GetNumBFrames", lambda: 0)()
        if b_frames:
            raise RuntimeError(f"NVENC was configured without B-frames but uses {b_frames}")
        self._closed = False
        get_params = getattr(self._encoder, "GetSequenceParams", None)
        if get_params is None:
            self.close()
            raise RuntimeError(
                "PyNvVideoCodec 2.x is needed (its encoder has no GetSequenceParams)"
            )
        # SPS/PPS for the container's header (avcC), known before the first frame.
        self.sequence_params: bytes = bytes(get_params())

    def encode(self, frame_hwc_u8: Any) -> list[bytes]:
        """Encode one RGB ``[H, W, 3]`` (or gray ``[H, W]``) uint8 frame.

        Returns the access units that came out (NVENC delays output by a few frames, so often
        none at first; each is one frame's Annex-B bytes).
        """
        if tuple(frame_hwc_u8.shape[:2]) != (self.height, self.width):
            raise ValueError(
                f"frame is {frame_hwc_u8.shape[1]}x{frame_hwc_u8.shape[0]}, the encoder "
                f"{self.width}x{self.height}"
            )
        rgb = frame_hwc_u8 if frame_hwc_u8.ndim == 3 else frame_hwc_u8[..., None]
        if self._device_input:
            with self._cupy.cuda.Device(self._gpu):
                self._rgba[..., :3] = self._cupy.asarray(rgb)
            surface = self._rgba
        else:
            self._rgba[..., :3] = rgb if isinstance(rgb, np.ndarray) else rgb.get()
            surface = self._rgba.reshape(-1)  # the host path takes the frame's bytes, flat
        return _access_units(self._encoder.Encode(surface))

    def flush(self) -> list[bytes]:
        """Drain the encoder: the access units of the frames still inside it."""
        if self._closed:
            return []
        self._closed = True
        return _access_units(self._encoder.EndEncode())

    def close(self) -> None:
        """Release the session (after :meth:`flush`, or to abandon the output)."""
        if not self._closed:
            self._closed = True
            _close_encoder(self._encoder)
        self._encoder = None


def _access_units(output: Any) -> list[bytes]:
    """Access units in what ``Encode``/``EndEncode`` returned (bytes, or a list of dicts)."""
    if output is None:
        return []
    if isinstance(output, (bytes, bytearray, memoryview, np.ndarray)):
        chunks = [bytes(output)]
    else:
        chunks = [bytes(item["data"] if isinstance(item, dict) else item) for item in output]
    units: list[bytes] = []
    for chunk in chunks:
        units.extend(split_access_units(chunk))
    return units


# ---- H.264 Annex-B ---------------------------------------------------------------------------


def _nal_units(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of each NAL unit's bytes after its start code, in order."""
    starts: list[int] = []
    i = data.find(_START_CODE)
    while i >= 0:
        starts.append(i + 3)
        i = data.find(_START_CODE, i + 3)
    units = []
    for n, start in enumerate(starts):
        end = starts[n + 1] - 3 if n + 1 < len(starts) else len(data)
        if n + 1 < len(starts) and end > start and data[end - 1] == 0:
            end -= 1  # the next start code is a 4-byte one (00 00 00 01)
        units.append((start, end))
    return units


def nal_types(data: bytes) -> list[int]:
    """The ``nal_unit_type`` of each NAL unit of Annex-B ``data``."""
    return [data[start] & 0x1F for start, end in _nal_units(data) if end > start]


def split_access_units(data: bytes) -> list[bytes]:
    """Split an Annex-B H.264 byte string into access units (one coded frame each).

    A new access unit starts at an access unit delimiter, at SPS/PPS/SEI following a slice, or
    at a slice whose ``first_mb_in_slice`` is 0 following a slice (H.264 7.4.1.2.3, for
    progressive streams without slice loss). Bytes before the first start code are dropped.
    """
    units: list[bytes] = []
    au_start: int | None = None
    seen_slice = False
    for start, end in _nal_units(data):
        if end <= start:
            continue
        nal_type = data[start] & 0x1F
        begins_au = False
        if nal_type == _NAL_AUD or nal_type in (_NAL_SEI, _NAL_SPS, _NAL_PPS):
            begins_au = seen_slice
        elif nal_type in (_NAL_SLICE, _NAL_IDR):
            # first_mb_in_slice is ue(v): its first bit is 1 exactly when it is 0.
            begins_au = seen_slice and end > start + 1 and bool(data[start + 1] & 0x80)
        code_start = start - 4 if start >= 4 and data[start - 4] == 0 else start - 3
        if begins_au and au_start is not None:
            units.append(data[au_start:code_start])
            au_start, seen_slice = code_start, False
        if au_start is None:
            au_start = code_start
        if nal_type in (_NAL_SLICE, _NAL_IDR):
            seen_slice = True
    if au_start is not None:
        units.append(data[au_start:])
    return units


def is_idr(access_unit: bytes) -> bool:
    """Whether the access unit is an IDR picture (a random-access point)."""
    return _NAL_IDR in nal_types(access_unit)


# ---- muxing -----------------------------------------------------------------------------------


def add_h264_mux_stream(
    container: Any,
    *,
    extradata: bytes,
    width: int,
    height: int,
    rate: Fraction,
    time_base: Fraction,
    colorspace: int,
    color_range: int,
    color_primaries: int,
    color_trc: int,
    rotation: int = 0,
    sample_aspect_ratio: Fraction | None = None,
) -> Any:
    """A video stream in ``container`` for pre-encoded H.264, tagged like the libx264 streams.

    ``extradata`` is the stream's SPS/PPS in Annex-B form (NVENC's ``GetSequenceParams``). It
    must be known before the header is written: a fragmented MP4 writes its ``moov`` (and the
    ``avcC`` box inside, made from the extradata) with the header, which the first packet of
    any stream triggers (audio may come first), and an empty ``avcC`` leaves a file nothing
    decodes. FFmpeg's muxers turn Annex-B extradata and packets into the MP4/Matroska form.

    The stream gets a codec context that is never opened (PyAV copies its fields into the
    stream's parameters when the header is written): size, frame rate, time base, colour tags,
    sample aspect ratio, extradata, and the rotation matrix. ``add_mux_stream`` would carry only
    size and rate.
    """
    import io

    import av

    if not extradata:
        raise ValueError("pre-encoded H.264 needs its SPS/PPS (extradata) before the header")
    # A codec context created from a template is marked "initialised" by PyAV, and so is not
    # opened as an encoder when the header is written; the template is a scratch stream.
    with av.open(io.BytesIO(), "w", format="mp4") as scratch:
        template = scratch.add_stream("h264", rate=rate)
        stream = container.add_stream_from_template(template, opaque=False)
    stream.time_base = time_base  # else the template's (1 / rate) would round the timestamps
    context = stream.codec_context
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = time_base
    context.framerate = rate
    context.extradata = bytes(extradata)
    context.colorspace = colorspace
    context.color_range = color_range
    context.color_primaries = color_primaries
    context.color_trc = color_trc
    if sample_aspect_ratio:
        context.sample_aspect_ratio = sample_aspect_ratio
    if rotation:
        stream.set_display_rotation(rotation)
    return stream


def sequence_params(access_unit: bytes) -> bytes:
    """The SPS and PPS NAL units of an Annex-B access unit (with start codes), or b""."""
    return b"".join(
        b"\x00\x00\x00\x01" + access_unit[start:end]
        for start, end in _nal_units(access_unit)
        if end > start and access_unit[start] & 0x1F in (_NAL_SPS, _NAL_PPS)
    )


class H264PacketMuxer:
    """Turns Annex-B H.264 access units into ``av.Packet`` s of one stream, one per frame.

    Frames enter the encoder in display order with their pts (:meth:`frame_submitted`); an
    encoder without B-frames emits their access units in the same order, possibly later and
    several at once, and :meth:`packets` pairs each with the oldest waiting pts (pts == dts,
    in ``time_base``, the source's: the timestamps the libx264 path keeps).

    Args:
        stream: From :func:`add_h264_mux_stream`.
        time_base: Unit of the pts given to :meth:`frame_submitted`.
        rate: Frame rate: each packet lasts one frame (as the packets of FFmpeg's encoders do;
            the fragmented MP4's sample durations and the stream's frame rate come from it).
    """

    def __init__(self, stream: Any, time_base: Fraction, rate: Fraction) -> None:
        self.stream = stream
        self._time_base = time_base
        self._duration = max(1, round(1 / (Fraction(rate) * Fraction(time_base))))
        self._pending_pts: deque[int] = deque()
        self._first = True

    def frame_submitted(self, pts: int) -> None:
        """Record the pts of a frame just given to the encoder."""
        self._pending_pts.append(pts)

    def packets(self, access_units: Iterable[bytes]) -> list[Any]:
        """Packets for the access units the encoder emitted (in order)."""
        import av

        packets = []
        for unit in access_units:
            if not self._pending_pts:
                raise RuntimeError("the H.264 encoder emitted more frames than it was given")
            keyframe = is_idr(unit)
            if self._first and not keyframe:
                raise RuntimeError("the first frame from the H.264 encoder is not an IDR frame")
            self._first = False
            packet = av.Packet(unit)
            packet.stream = self.stream
            packet.time_base = self._time_base
            packet.pts = packet.dts = self._pending_pts.popleft()
            packet.duration = self._duration
            packet.is_keyframe = keyframe
            packets.append(packet)
        return packets

    @property
    def frames_waiting(self) -> int:
        """Frames submitted whose access unit has not come out yet."""
        return len(self._pending_pts)


class AccessUnitEncoder(Protocol):
    """An H.264 encoder that gives Annex-B access units (:class:`NvencH264Encoder`)."""

    sequence_params: bytes

    def encode(self, frame_hwc_u8: Any) -> list[bytes]: ...

    def flush(self) -> list[bytes]: ...

    def close(self) -> None: ...


class PreEncodedH264Track:
    """An output video stream fed by an :class:`AccessUnitEncoder`: encode, then mux.

    Args:
        container: PyAV output container (before anything was muxed into it).
        encoder: Gives the access units; its ``sequence_params`` become the extradata.
        width, height, rate, time_base, rotation, sample_aspect_ratio: As the libx264 stream's.
        color_primaries, color_trc: The source's (the matrix and range are NVENC's, fixed);
            unspecified ones become BT.709, so that MP4 writes the colour box at all.
    """

    def __init__(
        self,
        container: Any,
        encoder: AccessUnitEncoder,
        *,
        width: int,
        height: int,
        rate: Fraction,
        time_base: Fraction,
        color_primaries: int,
        color_trc: int,
        rotation: int = 0,
        sample_aspect_ratio: Fraction | None = None,
    ) -> None:
        self.encoder = encoder
        self.stream = add_h264_mux_stream(
            container,
            extradata=encoder.sequence_params,
            width=width,
            height=height,
            rate=rate,
            time_base=time_base,
            colorspace=NVENC_COLORSPACE,
            color_range=NVENC_COLOR_RANGE,
            color_primaries=_FALLBACK_PRIMARIES
            if color_primaries == _UNSPECIFIED
            else color_primaries,
            color_trc=_FALLBACK_TRC if color_trc == _UNSPECIFIED else color_trc,
            rotation=rotation,
            sample_aspect_ratio=sample_aspect_ratio,
        )
        self._muxer = H264PacketMuxer(self.stream, time_base, rate)

    def encode(self, frame_hwc_u8: Any, pts: int) -> list[Any]:
        """Encode one frame shown at ``pts``; the packets ready to mux (possibly none)."""
        self._muxer.frame_submitted(pts)
        return self._muxer.packets(self.encoder.encode(frame_hwc_u8))

    def flush(self) -> list[Any]:
        """The packets of the frames still in the encoder; every frame has one after this."""
        packets = self._muxer.packets(self.encoder.flush())
        if self._muxer.frames_waiting:
            raise RuntimeError(
                f"the H.264 encoder lost {self._muxer.frames_waiting} frames at the end"
            )
        return packets

    def close(self) -> None:
        """Release the encoder."""
        self.encoder.close()
