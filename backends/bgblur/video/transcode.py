"""Compressed video in, blurred compressed video out: decode -> blur in batches -> encode.

The engine of the ``background_blur_video`` model (``model_repository/background_blur_video``),
usable and tested without Triton: :func:`transcode` takes the bytes of a whole video file and a
``blur_batch`` callable and yields the output file in chunks as it is produced.

- Input: any container and codec FFmpeg demuxes whose video codec NVDEC can also decode
  (:data:`SUPPORTED_VIDEO_CODECS`: H.264, HEVC, AV1, VP8, VP9, MPEG-1/2/4, VC-1, MJPEG), so a CPU
  and a GPU server accept the same inputs. The first video stream is used.
- Decode: a server-side decoder of ``bgblur_client.decoders.DECODERS`` (the client's table and
  interface): PyAV (FFmpeg, CPU; audio packets interleaved in the same demux pass) or NVDEC
  through PyNvVideoCodec (``decoder="nvdec"``, :mod:`bgblur.video.nvdec`; frames stay in GPU
  memory, NV12 -> RGB with ``bgblur.ops.nv12_to_rgb``), in a thread ahead of the blur.
- Blur: ``blur_batch(frames_nhwc_u8) -> blurred_nhwc_u8`` on upright RGB batches of at most
  ``options.batch_size`` frames, fewer where that many would exceed one request's
  ``MAX_REQUEST_BYTES`` (:func:`frames_per_batch`: 2 at 8K UHD), through the served ensemble
  (BLS) or the in-process pipeline.
- Memory: what a session buffers is bounded in bytes (:func:`plan_frames`): decoded batches
  queued ahead of the blur, FFmpeg decoder threads, libx264's lookahead, reference and B-frames
  and threads; with ``max_session_bytes`` the input plus that estimate must fit the limit.
- Encode: H.264 (libx264, yuv420p, CRF ``options.crf``, preset ``options.preset``, a keyframe
  every ``options.gop_seconds``; or NVENC through PyNvVideoCodec where the GPU has one (its
  P1..P7 preset matching ``options.preset``), ``options.encoder``, see
  :mod:`bgblur.video.encoders`) in fragmented MP4 (``frag_keyframe+empty_moov``): the output is
  written front to back with no seek, so every chunk can be sent as soon as it exists and a prefix
  of the chunks is a playable file. The source's time base and frame timestamps are kept (so frame
  rate and A/V sync), its colour tags are copied and used for the RGB <-> YUV conversions, its
  rotation metadata is kept (frames are blurred upright), an odd width or height is cropped by one
  pixel (yuv420p).
- Audio: the first audio stream is copied packet for packet when MP4 can hold its codec, else
  re-encoded to AAC. Other streams are dropped.

Errors: :class:`~bgblur.errors.InvalidInputError` for empty, unreadable, corrupt or truncated
input, a missing video stream, an unsupported codec or too large frames (the model answers
INVALID_ARG); :class:`~bgblur.errors.ModelUnavailableError` when PyAV is missing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from bgblur.errors import InvalidInputError, ModelUnavailableError
from bgblur.parameters import MAX_FRAME_LONG_SIDE, MAX_FRAME_SHORT_SIDE, MAX_REQUEST_BYTES
from bgblur.video.encoders import (
    DEFAULT_PRESET,
    ENCODER_CHOICES,
    X264_PRESETS,
    AccessUnitEncoder,
    NvencH264Encoder,
    PreEncodedH264Track,
    choose_encoder,
)
from bgblur.video.growing import GrowingBytes
from bgblur_client.decoders import (
    DECODERS,
    DecodedBatch,
    DecodedItem,
    DecodeSettings,
    VideoDecodeError,
    VideoSource,
    decode_video,
    decoder_names,
)

LOG = logging.getLogger("bgblur.video")

# What NVDEC decodes (Video Codec SDK, cudaVideoCodec), by FFmpeg codec name.
SUPPORTED_VIDEO_CODECS: frozenset[str] = frozenset(
    {"h264", "hevc", "av1", "vp8", "vp9", "mpeg1video", "mpeg2video", "mpeg4", "vc1", "mjpeg"}
)
MAX_BATCH_SIZE = 8
_FALLBACK_RATE = Fraction(30)
_FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}

BlurBatch = Callable[[Any], Any]

# ---- memory: batches and buffers sized in bytes ----------------------------------------------

QUEUED_FRAME_BYTES = MAX_REQUEST_BYTES
"""Decoded frames the decoder thread may queue ahead of the blur (bytes; one batch at least, two
at most): two batches at 1080p, one at 4K and 8K UHD."""
DECODER_THREAD_BYTES = 128 << 20
"""FFmpeg frame threads of one session's decoder, in decoded YUV 4:2:0 frames' bytes (each
thread holds a frame): the host's cores (at most 16) up to 4K, 2 at 8K."""
DECODER_MAX_DPB_MBS = 696_320
"""H.264's largest decoded picture buffer (levels 6-6.2), in macroblocks: the reference frames a
decoder may hold (16 at 1080p, 5 at 8K UHD)."""
ENCODER_FRAME_BYTES = 768 << 20
"""What libx264 may buffer per session (bytes): its lookahead, reference and B-frames and frame
threads are cut (in that order) until their frames fit."""
X264_BYTES_PER_PIXEL = 5
"""Host bytes libx264 holds per buffered frame and pixel (padded planes, half-pel planes, lowres
copy), rounded up from what PyAV 14 / x264 164 hold at 1080p and 8K (docs/benchmarks.md)."""
X264_MAX_THREADS = 16
# (rc-lookahead, refs, bframes) of each libx264 preset (x264's x264_param_default_preset).
_X264_PRESET_BUFFERS: dict[str, tuple[int, int, int]] = {
    "ultrafast": (0, 1, 0),
    "superfast": (0, 1, 3),
    "veryfast": (10, 1, 3),
    "faster": (20, 2, 3),
    "fast": (30, 2, 3),
    "medium": (40, 3, 3),
    "slow": (50, 5, 3),
    "slower": (60, 8, 8),
    "veryslow": (60, 16, 8),
    "placebo": (60, 16, 16),
}


def frames_per_batch(width: int, height: int, requested: int) -> int:
    """Frames of one blur batch of ``width`` x ``height`` RGB uint8 frames: ``requested``, or
    fewer where that many would exceed one request's ``MAX_REQUEST_BYTES``; at least 1.

    e.g. with ``requested=8``: 8 at 1080p and 4K UHD, 2 at 8K UHD (7680x4320).
    """
    if width < 1 or height < 1 or requested < 1:
        raise ValueError(f"need a positive size and batch, got {width}x{height}, {requested}")
    return max(1, min(requested, MAX_REQUEST_BYTES // (width * height * 3)))


@dataclass(frozen=True)
class FramePlan:
    """How a session buffers its ``width`` x ``height`` frames, each buffer sized in bytes.

    Attributes:
        batch_frames: frames per blur batch (:func:`frames_per_batch`).
        batch_bytes: one batch's RGB uint8 bytes.
        queued_bytes: the most decoded frames (bytes) queued ahead of the blur; a batch at least.
        decoder_threads: the FFmpeg decoder's frame threads.
        x264_options: libx264 options that cap its buffered frames (``rc-lookahead``, ``refs``,
            ``bf``, ``threads``), those the preset's own values exceed.
        frame_bytes: the estimate of the host memory the session's frames take at most (bytes):
            RGB batches (being decoded, queued, blurred, blurred back), the decoder's frames
            (threads and reference frames) and libx264's.
    """

    batch_frames: int
    batch_bytes: int
    queued_bytes: int
    decoder_threads: int
    x264_options: dict[str, str]
    frame_bytes: int


def plan_frames(width: int, height: int, batch_size: int, preset: str = "medium") -> FramePlan:
    """The :class:`FramePlan` of a session of ``width`` x ``height`` frames.

    Args:
        width, height: the decoded frame size (pixels).
        batch_size: the requested frames per batch (``VideoOptions.batch_size``).
        preset: the libx264 preset (its lookahead, reference and B-frames are capped from there).
    """
    pixels = width * height
    rgb_bytes, yuv_bytes = pixels * 3, pixels * 3 // 2
    batch_frames = frames_per_batch(width, height, batch_size)
    batch_bytes = batch_frames * rgb_bytes
    queued_batches = max(1, min(2, QUEUED_FRAME_BYTES // batch_bytes))
    cores = min(os.cpu_count() or 1, X264_MAX_THREADS)
    decoder_threads = max(1, min(cores, DECODER_THREAD_BYTES // yuv_bytes))
    macroblocks = -(-width // 16) * -(-height // 16)
    reference_frames = max(1, min(16, DECODER_MAX_DPB_MBS // macroblocks))
    x264_options, x264_frames = _x264_buffers(pixels, preset, cores)
    frame_bytes = (
        (queued_batches + 3) * batch_bytes
        + (decoder_threads + reference_frames) * yuv_bytes
        + x264_frames * X264_BYTES_PER_PIXEL * pixels
    )
    return FramePlan(
        batch_frames=batch_frames,
        batch_bytes=batch_bytes,
        queued_bytes=queued_batches * batch_bytes,
        decoder_threads=decoder_threads,
        x264_options=x264_options,
        frame_bytes=frame_bytes,
    )


def _x264_buffers(pixels: int, preset: str, cores: int) -> tuple[dict[str, str], int]:
    """(libx264 options capping its buffers, the frames it then buffers at most)."""
    lookahead, refs, bframes = _X264_PRESET_BUFFERS.get(preset, _X264_PRESET_BUFFERS["placebo"])
    preset_values = (lookahead, refs, bframes)
    threads = cores
    fits = max(4, ENCODER_FRAME_BYTES // (X264_BYTES_PER_PIXEL * pixels))

    def buffered() -> int:  # + the frame being encoded and the one handed in
        return lookahead + refs + bframes + threads + 2

    if buffered() > fits:
        lookahead = max(0, fits - (refs + bframes + threads + 2))
    if buffered() > fits:
        refs, bframes = 1, 0
    if buffered() > fits:
        threads = max(1, fits - (lookahead + refs + bframes + 2))
    options = {"threads": str(threads)}
    for name, value, preset_value in zip(
        ("rc-lookahead", "refs", "bf"), (lookahead, refs, bframes), preset_values, strict=True
    ):
        if value != preset_value:
            options[name] = str(value)
    return options, buffered()


@dataclass(frozen=True)
class VideoOptions:
    """Per-request settings of the video model (request parameters of the same names).

    Attributes:
        batch_size: frames per blur call, 1..8.
        crf: libx264 constant rate factor, 0..51 (lower: better and larger).
        preset: libx264 preset, ``ultrafast`` .. ``placebo`` (speed against size); NVENC takes
            the matching P1..P7 preset.
        gop_seconds: seconds between keyframes (each starts an MP4 fragment), in (0, 60].
        chunk_bytes: an output chunk is sent once this many bytes are ready, >= 4096.
        encoder: ``"auto"`` (NVENC where the GPU has one, else libx264), ``"nvenc"`` or
            ``"x264"``; NVENC takes ``crf`` as its constant-quality target.
    """

    batch_size: int = 4
    crf: int = 18
    gop_seconds: float = 2.0
    chunk_bytes: int = 1 << 20
    encoder: str = "auto"
    preset: str = DEFAULT_PRESET

    def __post_init__(self) -> None:
        checks = [
            ("batch_size", self.batch_size, int, 1 <= self.batch_size <= MAX_BATCH_SIZE, "1..8"),
            ("crf", self.crf, int, 0 <= self.crf <= 51, "0..51"),
            ("gop_seconds", self.gop_seconds, float, 0 < self.gop_seconds <= 60, "(0, 60]"),
            ("chunk_bytes", self.chunk_bytes, int, self.chunk_bytes >= 4096, ">= 4096"),
        ]
        for name, value, kind, ok, allowed in checks:
            if isinstance(value, bool) or not isinstance(
                value, (int, float) if kind is float else int
            ):
                raise InvalidInputError(
                    f"parameter {name!r} must be {kind.__name__}, got {value!r}"
                )
            if not ok:
                raise InvalidInputError(f"parameter {name!r} must be in {allowed}, got {value!r}")
        if self.encoder not in ENCODER_CHOICES:
            raise InvalidInputError(
                f"parameter 'encoder' must be one of {', '.join(ENCODER_CHOICES)}, "
                f"got {self.encoder!r}"
            )
        if self.preset not in X264_PRESETS:
            raise InvalidInputError(
                f"parameter 'preset' must be one of {', '.join(X264_PRESETS)}, got {self.preset!r}"
            )

    @classmethod
    def split_parameters(cls, parameters: dict[str, Any]) -> tuple[VideoOptions, dict[str, Any]]:
        """``(VideoOptions from its own keys, the remaining keys)`` of request parameters."""
        names = set(cls.__dataclass_fields__)
        own = {k: v for k, v in parameters.items() if k in names}
        if isinstance(own.get("gop_seconds"), int) and not isinstance(own["gop_seconds"], bool):
            own["gop_seconds"] = float(own["gop_seconds"])
        return cls(**own), {k: v for k, v in parameters.items() if k not in names}


@dataclass(frozen=True)
class EncodedChunk:
    """A piece of the output file.

    Attributes:
        data: the next bytes of the fragmented MP4 (concatenate all chunks for the file);
            a bytearray, so that NumPy/torch views of it are writable.
        frames_done: frames encoded so far (for progress).
        final: True on the last chunk (its ``data`` may be empty).
    """

    data: bytearray
    frames_done: int
    final: bool = False


def transcode(
    video_bytes: bytes | bytearray | memoryview | np.ndarray | GrowingBytes,
    blur_batch: BlurBatch,
    *,
    options: VideoOptions | None = None,
    decoder: str = "pyav",
    gpu_index: int = 0,
    cancelled: Callable[[], bool] = lambda: False,
    nvenc_allowed: bool = True,
    max_session_bytes: int | None = None,
) -> Iterator[EncodedChunk]:
    """Blur the background of a whole video file; yield the output file in chunks.

    Args:
        video_bytes: the input file's bytes (a 1-D uint8 array works too), or a
            :class:`~bgblur.video.growing.GrowingBytes` that is still receiving them (decoding
            starts at once and waits for the next chunk; a streamable format is needed).
        blur_batch: ``[B, H, W, 3]`` uint8 RGB upright frames (NumPy, or CuPy with
            ``decoder="nvdec"``) -> blurred frames of the same shape (NumPy or CuPy).
        options: batch size, encoder settings, chunk size.
        decoder: a server-side decoder of ``bgblur_client.decoders.DECODERS``: ``"pyav"``
            (CPU) or ``"nvdec"`` (PyNvVideoCodec on GPU ``gpu_index``).
        gpu_index: the GPU of NVDEC and NVENC.
        nvenc_allowed: False on a CPU instance: ``options.encoder="auto"`` then means libx264
            without probing a GPU, and ``"nvenc"`` is refused.
        cancelled: polled between batches; when it returns True the generator stops
            (without a final chunk).
        max_session_bytes: the most memory the session may take (bytes): the input (a chunked
            stream's so far and to come) plus its frame buffers (:attr:`FramePlan.frame_bytes`,
            known once the first frame is decoded); None: no limit.

    Yields:
        :class:`EncodedChunk` s; the last has ``final=True``.

    Raises:
        InvalidInputError: empty, unreadable, corrupt or truncated input, no video stream,
            unsupported codec, frames beyond the size limit, a session over
            ``max_session_bytes``.
        ModelUnavailableError: PyAV (or, for ``nvdec``, PyNvVideoCodec/CuPy) is missing, or
            ``options.encoder="nvenc"`` and NVENC is unavailable.
    """
    options = options or VideoOptions()
    if decoder not in decoder_names("server"):
        raise InvalidInputError(
            f"decoder must be one of {decoder_names('server')}, got {decoder!r}"
        )
    av = _import_av()
    chunked = isinstance(video_bytes, GrowingBytes)
    data = video_bytes if chunked else _as_bytes(video_bytes)
    if not chunked and not data:
        raise InvalidInputError("VIDEO is empty: send the bytes of a video file (e.g. an MP4)")
    source = _open_source(av, data)
    try:
        video = source.streams.video[0]
        audio = source.streams.audio[0] if source.streams.audio else None
        first = _first_frame(av, source, video, chunked=chunked)
        fmt = _SourceFormat.of(video, first)
        plan = plan_frames(fmt.width, fmt.height, options.batch_size, options.preset)
        if max_session_bytes is not None:
            _hold_within(data, plan, fmt, max_session_bytes)
        encoder = _choose_encoder(options.encoder, fmt, gpu_index, nvenc_allowed)
        output = _FragmentedMp4Writer(
            av,
            fmt,
            options,
            audio,
            encoder=encoder,
            gpu_index=gpu_index,
            device_input=DECODERS[decoder].on_gpu,
            x264_options=plan.x264_options,
        )
        settings = DecodeSettings(
            batch_frames=plan.batch_frames,
            quarter_turns=fmt.quarter_turns,
            audio=audio is not None,
            color_matrix=fmt.color_matrix,
            full_range=fmt.full_range,
            gpu_index=gpu_index,
            threads=plan.decoder_threads,
            declared_frames=fmt.declared_frames,
            label="VIDEO",
            container_options=_GROWING_PROBE if chunked else {},
        )
        # A chunked stream: each decoder pass reads it through a reader of its own.
        items = _decoded(decoder, data.reader if chunked else data, settings)

        # A chunked stream's decoder may be waiting for a chunk when the session stops: the
        # abort wakes it (with an error) so that its thread can be joined.
        def on_stop() -> None:
            if chunked:
                data.abort("the transcode stopped")

        yield from _run(
            items,
            blur_batch,
            output,
            options,
            fmt,
            video,
            cancelled,
            av,
            on_stop,
            queued_bytes=plan.queued_bytes,
        )
    finally:
        source.close()


def _hold_within(
    data: bytes | memoryview | GrowingBytes, plan: FramePlan, fmt: _SourceFormat, limit: int
) -> None:
    """Refuse a session whose input plus frame buffers exceed ``limit`` bytes; a chunked
    stream's later chunks are held to what is left."""
    frames = f"{fmt.width}x{fmt.height} frames, {plan.batch_frames} a batch"
    if len(data) + plan.frame_bytes > limit:
        raise InvalidInputError(
            f"VIDEO needs about {len(data) + plan.frame_bytes:,} bytes of server memory "
            f"({len(data):,} input bytes + {plan.frame_bytes:,} for {frames}), over the "
            f"session limit max_session_bytes = {limit:,}"
        )
    if isinstance(data, GrowingBytes):
        data.set_limit(
            limit - plan.frame_bytes,
            f"max_session_bytes = {limit:,} less {plan.frame_bytes:,} for {frames}",
        )


def _choose_encoder(requested: str, fmt: _SourceFormat, gpu_index: int, nvenc_allowed: bool) -> str:
    """``"nvenc"`` or ``"x264"`` for this video (logged with the reason)."""
    if not nvenc_allowed:
        if requested == "nvenc":
            raise ModelUnavailableError("encoder 'nvenc' needs a GPU instance of the model")
        kind, reason = "x264", "requested" if requested == "x264" else "CPU instance"
    else:
        width, height = fmt.even_size
        try:
            kind, reason = choose_encoder(
                requested, width=width, height=height, rate=fmt.rate, gpu=gpu_index
            )
        except RuntimeError as exc:
            raise ModelUnavailableError(str(exc)) from exc
    LOG.info("video encoder: %s (%s)", kind, reason)
    return kind


# ---- source --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SourceFormat:
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    frame_step: int
    rotation: int
    colorspace: int
    color_range: int
    color_primaries: int
    color_trc: int
    declared_frames: int

    @classmethod
    def of(cls, stream: Any, first: Any) -> _SourceFormat:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate or _FALLBACK_RATE
        has_timestamps = first.pts is not None and stream.time_base is not None
        time_base = Fraction(stream.time_base) if has_timestamps else 1 / Fraction(rate)
        if (
            first.width > MAX_FRAME_LONG_SIDE
            or first.height > MAX_FRAME_LONG_SIDE
            or min(first.width, first.height) > MAX_FRAME_SHORT_SIDE
        ):
            raise InvalidInputError(
                f"VIDEO frames are {first.width}x{first.height}; at most "
                f"{MAX_FRAME_LONG_SIDE}x{MAX_FRAME_SHORT_SIDE} (either orientation) is accepted"
            )
        if first.width < 2 or first.height < 2:
            raise InvalidInputError(f"VIDEO frames are {first.width}x{first.height}: too small")
        return cls(
            width=first.width,
            height=first.height,
            rate=Fraction(rate),
            time_base=time_base,
            frame_step=max(round(1 / (Fraction(rate) * time_base)), 1),
            rotation=int(getattr(first, "rotation", 0) or 0),
            colorspace=int(first.colorspace),
            color_range=int(first.color_range),
            color_primaries=int(first.color_primaries),
            color_trc=int(first.color_trc),
            declared_frames=int(stream.frames or 0),
        )

    @property
    def quarter_turns(self) -> int:
        """Counter-clockwise quarter turns that make a decoded frame upright."""
        return (self.rotation // 90) % 4 if self.rotation % 90 == 0 else 0

    @property
    def even_size(self) -> tuple[int, int]:
        return self.width - self.width % 2, self.height - self.height % 2

    @property
    def color_matrix(self) -> Literal["bt601", "bt709"]:
        """``"bt709"`` when the stream says BT.709 (AVCOL_SPC 1), else ``"bt601"``."""
        return "bt709" if self.colorspace == 1 else "bt601"

    @property
    def full_range(self) -> bool:
        return self.color_range == 2  # AVCOL_RANGE_JPEG


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:  # named in full: "not installed" and "fails to load" differ
        raise ModelUnavailableError(
            "PyAV (the av package) is not installed on the server: background_blur_video "
            f"cannot demux and encode ({type(exc).__name__}: {exc})"
        ) from None
    return av


def _as_bytes(video_bytes: Any) -> bytes | memoryview:
    if isinstance(video_bytes, np.ndarray):
        if video_bytes.dtype != np.uint8 or video_bytes.ndim != 1:
            raise InvalidInputError(
                f"VIDEO must be a 1-D uint8 tensor of file bytes, got {video_bytes.dtype} "
                f"{list(video_bytes.shape)}"
            )
        return memoryview(np.ascontiguousarray(video_bytes)).cast("B")
    return memoryview(video_bytes).cast("B")


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).rstrip(".").lower()


# FFmpeg's stream probe reads up to 5 s of media by default before the first frame comes out:
# a chunked stream's is capped at 1 s (its start-up delay), enough for H.264/HEVC/AAC streams.
_GROWING_PROBE = {"analyzeduration": "1000000", "probesize": "1048576"}


def _reader(data: bytes | memoryview | GrowingBytes) -> Any:
    """A new file object over the input (a chunked stream's waits for its next chunk)."""
    return data.reader() if isinstance(data, GrowingBytes) else io.BytesIO(data)


def _open(av: Any, data: bytes | memoryview | GrowingBytes) -> Any:
    """``av.open`` of the input, with the short probe for a chunked stream."""
    options = _GROWING_PROBE if isinstance(data, GrowingBytes) else {}
    return av.open(_reader(data), "r", options=options)


def _open_source(av: Any, data: bytes | memoryview | GrowingBytes) -> Any:
    try:
        source = _open(av, data)
    except (av.FFmpegError, OSError, ValueError) as exc:
        if isinstance(data, GrowingBytes):
            if data.abort_reason is not None:
                raise InvalidInputError(
                    f"the video stream was stopped: {data.abort_reason}"
                ) from None
            raise InvalidInputError(
                f"VIDEO stream is not readable ({len(data)} bytes so far): {_reason(exc)}; "
                f"{_STREAMABLE_HINT}"
            ) from exc
        raise InvalidInputError(
            f"VIDEO is not a readable video file ({len(data)} bytes): {_reason(exc)}"
        ) from exc
    if not source.streams.video:
        source.close()
        raise InvalidInputError("VIDEO has no video stream")
    name = source.streams.video[0].codec_context.name
    if name not in SUPPORTED_VIDEO_CODECS:
        source.close()
        raise InvalidInputError(
            f"unsupported video codec {name!r}; supported: "
            f"{', '.join(sorted(SUPPORTED_VIDEO_CODECS))}"
        )
    return source


_STREAMABLE_HINT = (
    "a chunked stream must be readable front to back (fragmented or faststart MP4, MPEG-TS, "
    "Matroska/WebM, raw H.264): send a plain MP4 whole, in one request"
)


def _first_frame(av: Any, source: Any, video: Any, *, chunked: bool = False) -> Any:
    try:
        for packet in source.demux(video):
            for frame in packet.decode():
                return frame
    except (av.FFmpegError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):  # a chunked stream stopped: its own reason
            raise
        if chunked:  # e.g. an MP4's index at its end
            raise InvalidInputError(
                f"VIDEO stream: no frame read front to back ({_reason(exc)}); {_STREAMABLE_HINT}"
            ) from exc
        raise InvalidInputError(f"VIDEO is corrupt: {_reason(exc)}") from exc
    raise InvalidInputError("VIDEO has no decodable video frame (corrupt or truncated)")


def _decoded(decoder: str, source: VideoSource, settings: DecodeSettings) -> Iterator[DecodedItem]:
    """``decode_video``'s batches and audio packets, its :class:`VideoDecodeError` as
    :class:`InvalidInputError` (the message, naming ``VIDEO``, unchanged)."""
    try:
        yield from decode_video(decoder, source, settings)
    except VideoDecodeError as exc:
        raise InvalidInputError(str(exc)) from exc


# ---- output --------------------------------------------------------------------------------


class _ByteSink:
    """A write-only, non-seekable file object that collects what the muxer writes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buffer += view
        return len(view)

    def __len__(self) -> int:
        return len(self._buffer)

    def take(self) -> bytearray:
        data, self._buffer = self._buffer, bytearray()
        return data


class _FragmentedMp4Writer:
    """H.264 in fragmented MP4 into a :class:`_ByteSink`, plus the source's audio.

    ``encoder="x264"`` encodes with libx264 through PyAV; ``"nvenc"`` with ``video_encoder``
    (by default an :class:`~bgblur.video.encoders.NvencH264Encoder` on GPU ``gpu_index``, taking
    frames from GPU memory when ``device_input``), whose access units are muxed as they are.
    """

    def __init__(
        self,
        av: Any,
        fmt: _SourceFormat,
        options: VideoOptions,
        audio: Any,
        *,
        encoder: str = "x264",
        gpu_index: int = 0,
        device_input: bool = False,
        video_encoder: AccessUnitEncoder | None = None,
        x264_options: dict[str, str] | None = None,
    ) -> None:
        if encoder not in ("x264", "nvenc"):
            raise ValueError(f"encoder must be 'x264' or 'nvenc', got {encoder!r}")
        self._av = av
        self._fmt = fmt
        self.sink = _ByteSink()
        self._container = av.open(self.sink, "w", format="mp4", options=dict(_FRAGMENTED_MP4))
        width, height = fmt.even_size
        gop = max(1, round(float(fmt.rate) * options.gop_seconds))
        self._track: PreEncodedH264Track | None = None
        self.device_frames = False  # whether write_frame wants frames left in GPU memory
        if encoder == "nvenc":
            try:
                if video_encoder is None:
                    video_encoder = NvencH264Encoder(
                        width,
                        height,
                        rate=fmt.rate,
                        gop=gop,
                        quality=options.crf,
                        gpu=gpu_index,
                        preset=options.preset,
                        device_input=device_input,
                    )
                    self.device_frames = device_input
                self._track = PreEncodedH264Track(
                    self._container,
                    video_encoder,
                    width=width,
                    height=height,
                    rate=fmt.rate,
                    time_base=fmt.time_base,
                    color_primaries=fmt.color_primaries,
                    color_trc=fmt.color_trc,
                    rotation=fmt.rotation,
                )
            except BaseException:
                if video_encoder is not None:
                    video_encoder.close()
                self._container.close()
                raise
            self._video = self._track.stream
        else:
            stream = self._container.add_stream(
                "libx264",
                rate=fmt.rate,
                options={
                    "crf": str(options.crf),
                    "preset": options.preset,
                    "g": str(gop),
                    **(x264_options or {}),
                },
            )
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = fmt.time_base
            self._apply_color(stream.codec_context)
            if fmt.rotation:
                stream.set_display_rotation(fmt.rotation)
            self._video = stream
        self._audio: Any = None
        self._audio_copied = False
        if audio is not None:
            # ADTS AAC (MPEG-TS, raw .aac) has no AudioSpecificConfig until its first packet
            # is filtered, but the fragmented MP4's header (empty moov) is written before it:
            # FFmpeg refuses it (EPERM). Such audio is re-encoded, like an unsupported codec.
            adts = audio.codec_context.name == "aac" and not audio.codec_context.extradata
            if audio.codec_context.name in self._container.supported_codecs and not adts:
                self._audio = self._container.add_stream_from_template(audio)
                self._audio_copied = True
            else:
                self._audio = self._container.add_stream("aac", rate=audio.rate)
                self._audio.layout = av.AudioLayout(f"{audio.layout.nb_channels}c")
                self._audio_decoder = audio.codec_context
        self._last_pts: int | None = None
        self.frames_done = 0

    def _apply_color(self, target: Any) -> None:
        fmt = self._fmt
        target.colorspace = fmt.colorspace
        target.color_range = fmt.color_range
        target.color_primaries = fmt.color_primaries
        target.color_trc = fmt.color_trc

    def write_frame(self, upright_hwc_u8: Any, source_pts: int | None) -> None:
        fmt = self._fmt
        width, height = fmt.even_size
        if source_pts is None or (self._last_pts is not None and source_pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + fmt.frame_step
        else:
            pts = source_pts
        self._last_pts = pts
        if self._track is not None:  # NVENC: frames may be CuPy arrays (device_frames)
            xp = np if isinstance(upright_hwc_u8, np.ndarray) else _cupy()
            stored_any = xp.rot90(upright_hwc_u8, -fmt.quarter_turns)[:height, :width]
            self._container.mux(self._track.encode(stored_any, pts))
            self.frames_done += 1
            return
        stored = np.rot90(upright_hwc_u8, -fmt.quarter_turns)[:height, :width]
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(stored), format="rgb24")
        self._apply_color(frame)
        frame.pts = pts
        self._container.mux(self._video.encode(frame))
        self.frames_done += 1

    def write_audio(self, packet: Any) -> None:
        if self._audio is None:
            return
        if self._audio_copied:
            if packet.dts is None:  # the demuxer's end-of-stream packet: nothing to copy
                return
            packet.stream = self._audio
            self._container.mux([packet])
        else:
            for frame in packet.decode():
                self._container.mux(self._audio.encode(frame))

    def finish(self) -> None:
        try:
            if self._track is not None:
                self._container.mux(self._track.flush())
            else:
                self._container.mux(self._video.encode(None))
            if self._audio is not None and not self._audio_copied:
                self._container.mux(self._audio.encode(None))
        finally:
            self._close_track()
            self._container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close_track()
        with contextlib.suppress(Exception):
            self._container.close()

    def _close_track(self) -> None:
        if self._track is not None:
            track, self._track = self._track, None
            track.close()


def _cupy() -> Any:
    import cupy

    return cupy


# ---- the loop ------------------------------------------------------------------------------

_END = object()


class _ByteBoundedChannel:
    """A FIFO between two threads bounded by the bytes it holds: :meth:`put` waits while the
    items queued and the new one together exceed ``capacity_bytes`` (one item always fits)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._items: deque[tuple[Any, int]] = deque()
        self._queued_bytes = 0
        self._changed = threading.Condition()

    def put(self, item: Any, nbytes: int, stop: threading.Event) -> bool:
        """Queue ``item`` of ``nbytes`` once it fits; False (not queued) once ``stop`` is set."""
        with self._changed:
            while self._items and self._queued_bytes + nbytes > self.capacity_bytes:
                if stop.is_set():
                    return False
                self._changed.wait(0.1)
            self._items.append((item, nbytes))
            self._queued_bytes += nbytes
            self._changed.notify_all()
        return True

    def put_last(self, item: Any) -> None:
        """The producer's last word (the end marker or its exception), whatever is queued."""
        with self._changed:
            self._items.append((item, 0))
            self._changed.notify_all()

    def get(self) -> Any:
        with self._changed:
            while not self._items:
                self._changed.wait()
            item, nbytes = self._items.popleft()
            self._queued_bytes -= nbytes
            self._changed.notify_all()
            return item

    def clear(self) -> None:
        with self._changed:
            self._items.clear()
            self._queued_bytes = 0
            self._changed.notify_all()


def _item_bytes(item: Any) -> int:
    """The bytes a decoded batch (RGB frames) or an audio packet holds."""
    if isinstance(item, DecodedBatch):
        return item.nbytes
    return int(getattr(item, "size", 0) or 0)


def _prefetch(
    items: Iterable[Any],
    capacity_bytes: int,
    stop: threading.Event,
    on_stop: Callable[[], None] = lambda: None,
) -> Iterator[Any]:
    """Run ``items`` on a helper thread, at most ``capacity_bytes`` of them (one item at least)
    ahead; re-raise its exception here. ``on_stop`` is called before the helper is joined (to
    wake it if it waits on input)."""
    channel = _ByteBoundedChannel(capacity_bytes)

    def produce() -> None:
        try:
            for item in items:
                if not channel.put(item, _item_bytes(item), stop):
                    return
                del item  # queued: the channel's reference is the only one
            channel.put_last(_END)
        except BaseException as exc:  # handed to the consumer
            channel.put_last(exc)

    worker = threading.Thread(target=produce, name="bgblur-video-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = channel.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            del item
    finally:
        stop.set()
        on_stop()
        while worker.is_alive():  # a producer waiting for room sees the stop
            channel.clear()
            worker.join(timeout=0.05)
        channel.clear()


def _to_host(array: Any) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.get()


def _run(
    items: Iterable[DecodedItem],
    blur_batch: BlurBatch,
    output: _FragmentedMp4Writer,
    options: VideoOptions,
    fmt: _SourceFormat,
    video: Any,
    cancelled: Callable[[], bool],
    av: Any,
    on_stop: Callable[[], None] = lambda: None,
    *,
    queued_bytes: int = QUEUED_FRAME_BYTES,
) -> Iterator[EncodedChunk]:
    stop = threading.Event()
    finished = False
    try:
        for item in _prefetch(items, queued_bytes, stop=stop, on_stop=on_stop):
            if cancelled():
                return
            if not isinstance(item, DecodedBatch):
                output.write_audio(item)
                continue
            blurred = blur_batch(item.frames_nhwc_u8)
            if not output.device_frames:
                blurred = _to_host(blurred)
            expected = tuple(item.frames_nhwc_u8.shape)
            if tuple(blurred.shape) != expected or blurred.dtype != np.uint8:
                raise RuntimeError(
                    f"blur returned {blurred.dtype} {list(blurred.shape)}, expected uint8 "
                    f"{list(expected)}"
                )
            frame_pts = item.pts
            del item  # the decoded batch, blurred: its memory goes before the encode
            for frame, pts in zip(blurred, frame_pts, strict=True):
                output.write_frame(frame, pts)
            del blurred
            if len(output.sink) >= options.chunk_bytes:
                yield EncodedChunk(output.sink.take(), output.frames_done)
        output.finish()
        finished = True
        yield EncodedChunk(output.sink.take(), output.frames_done, final=True)
    except av.FFmpegError as exc:
        raise InvalidInputError(f"VIDEO could not be transcoded: {_reason(exc)}") from exc
    finally:
        stop.set()
        if not finished:
            output.abort()
