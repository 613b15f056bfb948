"""Video decoders behind one interface, for the client and the server-side video model.

A decoder turns a video (a file, its bytes, or a stream still arriving) into
:class:`DecodedBatch` es: upright RGB frames ``[B, H, W, 3]`` uint8 with their source
presentation timestamps, NumPy on the host or CuPy on a GPU. With ``DecodeSettings(audio=True)``
the packets of the first audio stream come too (``av.Packet``, for copying or re-encoding): the
PyAV decoder interleaves them in one demux pass, the GPU decoders read the video only and
:func:`decode_video` yields the audio of a separate PyAV pass before their first batch.

:data:`DECODERS` is the one table of choices (``bgblur video --decoder``, the video model's
``decoder`` setting); ``auto`` takes the first available of nvdec, dali, pyav:

- pyav: FFmpeg on the CPU through PyAV (always present). Frames are converted with swscale's
  accurate path straight into their batch's array. Client and server.
- nvdec: PyNvVideoCodec (NVDEC) into GPU memory, NV12 -> RGB by the project's CUDA kernel
  (``bgblur.ops.nv12_to_rgb``, BT.601/709 and range from :class:`DecodeSettings`); implemented
  in the server library (:mod:`bgblur.video.nvdec`), so the client needs it installed beside.
  Client and server.
- dali: DALI's GPU video reader (NVDEC inside DALI, RGB out), files only; its timestamps come
  from PyAV demuxing the same file. Client only.

The implementations are loaded on first use (``DecoderSpec.factory``, ``"module:callable"``):
importing this module needs neither PyAV, CuPy nor the server library. Failures a video causes
(corrupt, truncated, changing size) raise :class:`VideoDecodeError`, a
:class:`~bgblur_client.errors.ClientError` naming the input by ``DecodeSettings.label``; the
server turns it into ``INVALID_ARG``.
"""

from __future__ import annotations

import functools
import importlib
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol, Union

import numpy as np

from bgblur_client.errors import ClientError, UsageError

if TYPE_CHECKING:
    import av

Side = Literal["client", "server"]

VideoSource = str | Path | bytes | bytearray | memoryview | Callable[[], BinaryIO]
"""What a decoder reads: a file path, the file's bytes, or a callable returning a new readable
file object over it each time it is called (read front to back; e.g. a stream still arriving,
whose reads wait for its next chunk)."""


class VideoDecodeError(ClientError):
    """The video cannot be decoded as a whole: corrupt, truncated, unreadable, without a video
    stream, or changing its frame size mid-stream. The message names the input
    (``DecodeSettings.label``)."""


@dataclass(frozen=True)
class DecodedBatch:
    """Consecutive decoded frames, in display order.

    Attributes:
        frames_nhwc_u8: upright RGB ``[B, H, W, 3]`` uint8, C-contiguous: a NumPy array (host)
            or a CuPy array on the decoding GPU, complete when the batch is yielded. A new
            array per batch (the consumer may keep it).
        pts: each frame's presentation timestamp in the video stream's time base (``B``
            entries), None where the source has none.
    """

    frames_nhwc_u8: Any
    pts: list[int | None]

    def __post_init__(self) -> None:
        count = int(self.frames_nhwc_u8.shape[0])
        if len(self.pts) != count:
            raise ValueError(f"{count} frames but {len(self.pts)} timestamps")

    def __len__(self) -> int:
        return int(self.frames_nhwc_u8.shape[0])

    @property
    def on_gpu(self) -> bool:
        """Whether the frames are in GPU memory (CuPy) rather than a NumPy array."""
        return not isinstance(self.frames_nhwc_u8, np.ndarray)

    @property
    def nbytes(self) -> int:
        """The frames' size in bytes."""
        return int(self.frames_nhwc_u8.nbytes)


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode (every decoder takes the same settings; each uses those it needs).

    Attributes:
        batch_frames: frames per batch (the last batch may hold fewer), >= 1.
        quarter_turns: counter-clockwise quarter turns that make a decoded frame upright
            (from the stream's rotation metadata).
        audio: also yield the packets of the first audio stream (``av.Packet``; the last one,
            with ``dts`` None, is the demuxer's end-of-stream packet that flushes a decoder).
        color_matrix: ``"bt601"`` or ``"bt709"``: the YUV -> RGB matrix of the GPU decoders'
            conversion (PyAV's swscale reads the frames' own tags).
        full_range: whether the stream's YUV is full range (GPU decoders' conversion).
        gpu_index: the GPU of the GPU decoders (their batches are CuPy arrays there).
        threads: PyAV's frame threads; 0: FFmpeg's choice (one per core).
        on_size_change: what a frame of another size than the first does: ``"error"``
            (:class:`VideoDecodeError`) or ``"scale"`` (scaled to the first frame's size;
            PyAV only: the GPU decoders refuse a size change either way).
        declared_frames: the frames the container's header declares: fewer decoded (but at
            least one) raise :class:`VideoDecodeError` (truncated); 0: not checked.
        label: names the input in error messages, e.g. ``"VIDEO"`` or ``"video 'in.mp4'"``.
        container_options: FFmpeg demuxer options of PyAV's ``av.open`` (e.g. a short probe
            for a stream still arriving).
    """

    batch_frames: int = 4
    quarter_turns: int = 0
    audio: bool = False
    color_matrix: Literal["bt601", "bt709"] = "bt601"
    full_range: bool = False
    gpu_index: int = 0
    threads: int = 0
    on_size_change: Literal["error", "scale"] = "error"
    declared_frames: int = 0
    label: str = "the video"
    container_options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {self.batch_frames}")
        if self.color_matrix not in ("bt601", "bt709"):
            raise ValueError(f"color_matrix must be 'bt601' or 'bt709', got {self.color_matrix!r}")
        if self.on_size_change not in ("error", "scale"):
            raise ValueError(
                f"on_size_change must be 'error' or 'scale', got {self.on_size_change!r}"
            )

    def size_changed(self, first: tuple[int, int], now: tuple[int, int]) -> VideoDecodeError:
        """The error of a frame of ``now`` (width, height) after frames of ``first``."""
        return VideoDecodeError(
            f"{self.label} changes size mid-stream ({first[0]}x{first[1]} -> "
            f"{now[0]}x{now[1]}); not supported"
        )


DecodedItem = Union[DecodedBatch, "av.Packet"]


class VideoDecoder(Protocol):
    """A decoder: ``decoder(source, settings)`` yields the video's :class:`DecodedBatch` es in
    display order; a decoder whose spec says ``interleaves_audio`` also yields the first audio
    stream's packets among them when ``settings.audio`` (the others never yield packets:
    :func:`decode_video` adds them). Raises :class:`VideoDecodeError` for a video it cannot
    decode; exceptions of the source's reads pass through unchanged."""

    def __call__(self, source: VideoSource, settings: DecodeSettings) -> Iterator[DecodedItem]: ...


@dataclass(frozen=True)
class DecoderSpec:
    """One decoder choice.

    Attributes:
        name: the choice's name (``--decoder NAME``).
        summary: what it is, in a few words.
        on_gpu: whether its batches are in GPU memory.
        sides: where it may run: ``"client"`` (``bgblur video``) and/or ``"server"`` (the
            ``background_blur_video`` model).
        modules: what must import for it to run (checked in order).
        needs: what it needs, for an error message naming what is missing.
        factory: ``"module:callable"`` of its :class:`VideoDecoder`, imported on first use.
        interleaves_audio: whether it yields the audio packets itself, in one demux pass.
    """

    name: str
    summary: str
    on_gpu: bool
    sides: frozenset[Side]
    modules: tuple[str, ...]
    needs: str
    factory: str
    interleaves_audio: bool = False

    def available(self) -> bool:
        """Whether it can run here: its modules import and, for a GPU decoder, a CUDA GPU
        answers."""
        return all(_importable(m) for m in self.modules) and (not self.on_gpu or _gpu_present())

    def load(self) -> VideoDecoder:
        """The decoder callable (its module imported now)."""
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)


DECODERS: Mapping[str, DecoderSpec] = MappingProxyType(
    {
        "pyav": DecoderSpec(
            name="pyav",
            summary="FFmpeg on the CPU through PyAV",
            on_gpu=False,
            sides=frozenset({"client", "server"}),
            modules=("av",),
            needs="PyAV",
            factory="bgblur_client.decoders:decode_pyav",
            interleaves_audio=True,
        ),
        "nvdec": DecoderSpec(
            name="nvdec",
            summary="NVDEC through PyNvVideoCodec, frames in GPU memory",
            on_gpu=True,
            sides=frozenset({"client", "server"}),
            modules=("PyNvVideoCodec", "cupy", "bgblur.video.nvdec"),
            needs="PyNvVideoCodec, the bgblur server library, CuPy and an NVIDIA GPU",
            factory="bgblur.video.nvdec:decode_nvdec",
        ),
        "dali": DecoderSpec(
            name="dali",
            summary="DALI's GPU video reader, frames in GPU memory",
            on_gpu=True,
            sides=frozenset({"client"}),
            modules=("nvidia.dali", "cupy"),
            needs="nvidia-dali, CuPy and an NVIDIA GPU",
            factory="bgblur_client.decoders:decode_dali",
        ),
    }
)
DECODER_CHOICES: tuple[str, ...] = ("auto", *DECODERS)
AUTO_ORDER: tuple[str, ...] = ("nvdec", "dali", "pyav")
"""What ``auto`` tries, best first (:func:`resolve_decoder`)."""


def decoder_names(side: Side) -> tuple[str, ...]:
    """The decoders that may run on ``side``, in table order (``server``: pyav, nvdec)."""
    return tuple(name for name, spec in DECODERS.items() if side in spec.sides)


def resolve_decoder(choice: str, side: Side = "client") -> str:
    """``choice``, or for ``auto`` the first available of :data:`AUTO_ORDER` on ``side``.

    Raises:
        UsageError: ``choice`` is not a decoder of ``side``, or it cannot run here (naming
            what it needs).
    """
    names = decoder_names(side)
    if choice != "auto" and choice not in names:
        raise UsageError(f"--decoder must be one of auto, {', '.join(names)}, got {choice!r}")
    if choice == "auto":
        return next(name for name in AUTO_ORDER if name in names and DECODERS[name].available())
    spec = DECODERS[choice]
    if not spec.available():
        raise UsageError(f"--decoder {choice} needs {spec.needs} on this machine")
    return choice


def decode_video(name: str, source: VideoSource, settings: DecodeSettings) -> Iterator[DecodedItem]:
    """Decode ``source`` with the decoder ``name`` of :data:`DECODERS`: its batches and, with
    ``settings.audio``, the first audio stream's packets (before the first batch where the
    decoder reads only the video).

    Raises:
        KeyError: ``name`` is not in :data:`DECODERS`.
        VideoDecodeError: the video cannot be decoded.
    """
    spec = DECODERS[name]
    decoder = spec.load()
    if settings.audio and not spec.interleaves_audio:
        yield from audio_packets(source, settings)
    yield from decoder(source, settings)


# ---- PyAV -------------------------------------------------------------------------------------


def open_container(source: VideoSource, settings: DecodeSettings) -> Any:
    """``av.open`` of ``source`` for reading (a new file object for a callable source).

    Raises:
        VideoDecodeError: FFmpeg cannot open it, or it has no video stream.
    """
    import av

    if callable(source):
        file: Any = source()
    elif isinstance(source, (str, Path)):
        file = str(source)
    else:
        file = io.BytesIO(source)
    try:
        container = av.open(file, "r", options=dict(settings.container_options))
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{settings.label} is not readable: {ffmpeg_reason(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{settings.label} has no video stream")
    return container


def decode_pyav(source: VideoSource, settings: DecodeSettings) -> Iterator[DecodedItem]:
    """The first video stream's upright RGB batches (NumPy), decoded by FFmpeg on the CPU, with
    the first audio stream's packets interleaved in demux order when ``settings.audio``.

    Each frame is converted (swscale, accurate rounding and full chroma interpolation: a
    decode -> encode round trip keeps its levels) straight into its batch's array, a new
    ``[batch_frames, H, W, 3]`` uint8 array per batch (no stacking). The ``VideoDecoder`` of
    ``DECODERS["pyav"]``.
    """
    import av

    flags = _yuv_to_rgb_flags()
    label = settings.label
    with open_container(source, settings) as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        if settings.threads:
            video.thread_count = settings.threads
        audio = container.streams.audio[0] if settings.audio and container.streams.audio else None
        streams = [video] if audio is None else [video, audio]
        size: tuple[int, int] | None = None
        batch: np.ndarray | None = None
        pts: list[int | None] = []
        decoded = 0
        try:
            for packet in container.demux(streams):
                if audio is not None and packet.stream is audio:
                    yield packet
                    continue
                for frame in packet.decode():
                    if size is None:
                        size = (frame.width, frame.height)
                    if (frame.width, frame.height) == size:
                        rgb = frame.to_ndarray(format="rgb24", interpolation=flags)
                    elif settings.on_size_change == "scale":
                        rgb = frame.to_ndarray(
                            format="rgb24", width=size[0], height=size[1], interpolation=flags
                        )
                    else:
                        raise settings.size_changed(size, (frame.width, frame.height))
                    upright = np.rot90(rgb, settings.quarter_turns)
                    if batch is None:  # a new array each batch: the last one may be in use
                        batch = np.empty((settings.batch_frames, *upright.shape), np.uint8)
                    batch[len(pts)] = upright
                    del rgb, upright
                    pts.append(frame.pts)
                    decoded += 1
                    if len(pts) == settings.batch_frames:
                        yield DecodedBatch(batch, pts)
                        batch, pts = None, []
        except av.FFmpegError as exc:
            raise VideoDecodeError(
                f"{label} is corrupt after {decoded} frames: {ffmpeg_reason(exc)}"
            ) from exc
        if batch is not None and pts:
            yield DecodedBatch(batch[: len(pts)], pts)
        if 0 < decoded < settings.declared_frames:
            raise VideoDecodeError(
                f"{label} is truncated: its header declares {settings.declared_frames} frames, "
                f"{decoded} could be decoded"
            )


def audio_packets(source: VideoSource, settings: DecodeSettings) -> Iterator[av.Packet]:
    """Every packet of the first audio stream (its end-of-stream packet last), from a PyAV
    demux pass of its own; nothing when there is no audio stream. For decoders that read only
    the video: a stream still arriving is read to its end before the video starts."""
    import av

    with open_container(source, settings) as container:
        if not container.streams.audio:
            return
        try:
            yield from container.demux(container.streams.audio[0])
        except av.FFmpegError as exc:
            raise VideoDecodeError(
                f"{settings.label}'s audio is corrupt: {ffmpeg_reason(exc)}"
            ) from exc


def display_timestamps(path: str | Path) -> list[int | None]:
    """Presentation timestamps of the first video stream's frames, in display order, from its
    packets (no decode): the i-th frame in display order has the i-th smallest packet pts."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stamps = [p.pts for p in container.demux(stream) if p.dts is not None or p.pts is not None]
    known = sorted(s for s in stamps if s is not None)
    return [*known, *([None] * (len(stamps) - len(known)))]


def ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's error text without the errno and file name PyAV adds around it, lower case."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).rstrip(".").lower()


@functools.cache
def _yuv_to_rgb_flags() -> Any:
    # swscale's default YUV -> RGB path is biased (a decode -> encode round trip darkens luma
    # by about 1 level per pass); accurate rounding with full chroma interpolation round-trips
    # exactly, for about 2 ms more per 720p frame.
    from av.video.reformatter import Interpolation

    return Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


# ---- DALI -------------------------------------------------------------------------------------


def decode_dali(source: VideoSource, settings: DecodeSettings) -> Iterator[DecodedBatch]:
    """Upright RGB batches (CuPy on ``settings.gpu_index``) from DALI's GPU video reader,
    ``batch_frames`` consecutive frames per sequence; timestamps from PyAV's demux of the same
    file (:func:`display_timestamps`). The ``VideoDecoder`` of ``DECODERS["dali"]``; reads
    files only.
    """
    if not isinstance(source, (str, Path)):
        raise TypeError(f"the dali decoder reads files only, got {type(source).__name__}")
    import cupy
    from nvidia.dali import fn, pipeline_def, types

    path, device, batch_frames = str(source), settings.gpu_index, settings.batch_frames
    stamps = display_timestamps(path)

    @pipeline_def(batch_size=1, num_threads=2, device_id=device, prefetch_queue_depth=2)
    def reader() -> Any:
        # No enable_frame_num: DALI 2.4 allows it only with labels or a file list, and the
        # frames are taken in order (step = sequence length), so their numbers are known.
        return fn.readers.video(
            device="gpu",
            filenames=[path],
            sequence_length=batch_frames,
            step=batch_frames,
            stride=1,
            pad_sequences=True,
            random_shuffle=False,
            skip_vfr_check=True,
            image_type=types.RGB,
            dtype=types.UINT8,
            name="reader",
        )

    pipe = reader()
    pipe.build()
    sequences = int(pipe.epoch_size("reader"))
    first_frame = 0
    for _ in range(sequences):
        (frames,) = pipe.run()
        with cupy.cuda.Device(device):
            sequence = cupy.asarray(frames.as_tensor())[0]  # [F, H, W, 3]
            # pad_sequences zero-fills past the end; the frame count says how many are real.
            real = max(0, min(batch_frames, len(stamps) - first_frame))
            sequence = sequence[:real]
            if settings.quarter_turns:
                sequence = cupy.rot90(sequence, settings.quarter_turns, axes=(1, 2))
            batch = cupy.ascontiguousarray(sequence)
            cupy.cuda.get_current_stream().synchronize()
        if real:
            yield DecodedBatch(batch, stamps[first_frame : first_frame + real])
        first_frame += batch_frames


# ---- availability -----------------------------------------------------------------------------


@functools.cache
def _importable(name: str) -> bool:
    """Whether ``name`` imports (a missing or broken package counts as absent)."""
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


@functools.cache
def _gpu_present() -> bool:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False
