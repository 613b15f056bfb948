"""Blur the background of a video file through the server.

Pipeline (one process, the main thread decodes and encodes; inference runs on the
client's worker threads, see :meth:`BlurClient.blur_batches`)::

    decode (PyAV, NVDEC or DALI) -> RGB batches [B, H, W, 3] -> Triton -> H.264/VP9 encode -> mux
                                \\-> audio packets copied (or re-encoded to AAC) ------------/

The decoders are those of :mod:`bgblur_client.decoders`; PyAV's and NVDEC's are the server-side
video model's too.

The model is the client's: with a stream model (``background_blur_stream``,
:attr:`BlurClient.sequence_model`) the video is one Triton sequence, its frames sent one per
request, in order, one at a time (masks smoothed over time, START on the first frame and END on
the last); with the stateless ``background_blur`` each batch of ``batch_size`` frames is one
request, ``in_flight`` of them at once (the most frames per second).

Output choices:

* Video is H.264 (libx264, yuv420p, CRF 18 and preset medium unless told otherwise, see
  :mod:`bgblur_client.encoding`) with the source's time base and frame timestamps, so
  frame count, frame rate and A/V sync are kept. Colour tags (matrix, range, primaries,
  transfer) are copied from the source and used for the RGB->YUV conversion, so colours
  round-trip. Sample aspect ratio is copied.
* Or VP9 (libvpx-vp9) for a ``.webm`` output, with the audio copied when WebM holds its
  codec (Opus, Vorbis) and re-encoded to Opus otherwise.
* Or NVENC (``encoder="nvenc"``, or ``"auto"`` where the GPU has one; PyNvVideoCodec through
  the server library's :mod:`bgblur.video.encoders`, when it is installed): the same
  timestamps, rotation and aspect ratio, but NVENC converts RGB->YUV itself with BT.601
  limited range, so the stream is tagged that way (primaries and transfer still the
  source's).
* Rotation metadata (phone videos) is kept; frames are turned upright for the server,
  since segmentation expects upright people, and turned back before encoding.
* yuv420p needs an even width and height. An odd-sized source is cropped by one pixel
  (last column and/or row) with a warning: nothing is invented and the loss is
  invisible, whereas 4:4:4 output (which allows odd sizes) does not play in browsers
  or QuickTime.
* The first audio stream is copied packet for packet when the output container accepts
  its codec, otherwise re-encoded to AAC (Opus in WebM). Other streams (subtitles, data)
  are dropped.
* Outputs are written to hidden partial files beside them and renamed into place when
  complete (:mod:`bgblur_client.files`): any failure deletes the partial files and leaves
  existing outputs as they were. Ctrl-C stops reading, flushes the encoder and closes the
  file, which then takes the output's name, so the partial output plays.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from tqdm import tqdm

from bgblur_client.decoders import DecodedBatch, DecodeSettings, decode_video, resolve_decoder
from bgblur_client.encoding import (
    VP9_ENCODER,
    EncoderSettings,
    check_settings_for,
    choose_h264_encoder,
    video_codec_for,
)
from bgblur_client.errors import ClientError, UsageError
from bgblur_client.files import check_output_path, commit, discard, partial_path
from bgblur_client.h264 import CRF, PRESET, ColorTags, add_h264_stream, encode_image
from bgblur_client.image import check_image_writable
from bgblur_client.preview import write_preview
from bgblur_client.transport import BlurClient, ParameterValue

log = logging.getLogger(__name__)

# "unknown": a stream blurred on the server, its audio not probed here
AudioHandling = Literal["copied", "re-encoded", "none", "unknown"]
_FALLBACK_RATE = Fraction(30)
_NVENC_GOP = 250  # frames between IDR frames: libx264's default keyint, which the x264 path has


@dataclass(frozen=True)
class VideoSummary:
    """What :func:`blur_video` did.

    Attributes:
        frames: Frames written.
        seconds: Wall time of decoding, inference and encoding (output closed).
        audio: Whether the audio was copied, re-encoded to AAC, or absent.
        encoder: The encoder used, ``"x264"``, ``"nvenc"`` (H.264) or ``"vp9"`` (WebM); ""
            when not encoded here.
        encoder_reason: Why that encoder (e.g. why NVENC was not used).
    """

    frames: int
    seconds: float
    audio: AudioHandling
    encoder: str = ""
    encoder_reason: str = ""

    @property
    def frames_per_s(self) -> float:
        """End-to-end throughput (decode + inference + encode)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _SourceFormat:
    """Properties of the source's first video stream, from its first decoded frame."""

    path: Path
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    frame_step: int  # one frame's duration in time_base units, for frames without pts
    color: ColorTags
    rotation: int  # counter-clockwise display rotation in degrees
    sample_aspect_ratio: Fraction | None
    frame_count: int  # as declared by the container; 0 when unknown

    @property
    def quarter_turns(self) -> int:
        """Counter-clockwise quarter turns that make a decoded frame upright."""
        return (self.rotation // 90) % 4 if self.rotation % 90 == 0 else 0

    @property
    def even_size(self) -> tuple[int, int]:
        """Encoded (width, height): the source's, rounded down to even numbers."""
        return self.width - self.width % 2, self.height - self.height % 2


def blur_video(
    client: BlurClient,
    in_path: str | Path,
    out_path: str | Path,
    *,
    batch_size: int = 4,
    in_flight: int = 2,
    parameters: Mapping[str, ParameterValue] | None = None,
    mask_path: str | Path | None = None,
    preview_path: str | Path | None = None,
    preview_label: str | None = None,
    progress: bool = True,
    decoder: str = "pyav",
    encoder: str = "auto",
    crf: int = CRF,
    preset: str = PRESET,
    sequence_id: int | None = None,
) -> VideoSummary:
    """Blur the background of every frame of ``in_path`` and write ``out_path``.

    Args:
        client: Connected client.
        in_path: Any video PyAV/FFmpeg can decode; its first video stream is used.
        out_path: Output file; the container follows the extension (``.mp4``, ``.m4v``,
            ``.mkv``, ``.mov``: H.264; ``.webm``: VP9). It appears only when complete; an
            existing file is replaced then, and kept as it was when the run fails.
        batch_size: Frames per request (1 to the model's max_batch_size); for a stream model
            (``client.sequence_model``), frames decoded together, each sent as its own request.
        in_flight: Requests outstanding at once, overlapping decode/encode with inference;
            for a stream model, batches decoded ahead (one request outstanding: the
            sequence's frames go in order).
        parameters: Optional server parameters, e.g. ``{"blur_ksize": 31}``.
        mask_path: Also write the foreground mask as a grayscale H.264 video here.
        preview_path: Also write a before|after image of the middle frame here.
        preview_label: Caption drawn on the preview.
        progress: Show a progress bar (on stderr, when it is a terminal).
        decoder: ``pyav`` (CPU), ``nvdec`` or ``dali`` (frames decoded into GPU memory,
            :mod:`bgblur_client.decoders`), or ``auto`` (the best present).
        encoder: ``x264`` (libx264 on the CPU), ``nvenc`` (the GPU's encoder through
            PyNvVideoCodec, on ``client.cuda_device``; an error where there is none) or ``auto``
            (NVENC where an encoder session opens, else libx264; the summary says why).
            A ``.webm`` output is VP9 (``auto`` only).
        crf: Constant rate factor: 0..51 for H.264 (libx264, or NVENC's quality target),
            0..63 for VP9; lower is better and larger.
        preset: libx264 preset (``ultrafast`` .. ``placebo``); NVENC takes the matching
            P1..P7, VP9 a matching speed.
        sequence_id: For a stream model, the video's sequence ID (None: a random one,
            :meth:`BlurClient.blur_batches`).

    Returns:
        A :class:`VideoSummary`.

    Raises:
        UsageError: Unsupported output extension or encoder settings, an unavailable
            encoder, an input that is missing or a directory, an output that is a directory.
        ClientError: Unreadable input, unwritable output, invalid batch size, or a server-side
            failure.
        KeyboardInterrupt: After closing the partial output so that it plays.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    mask_path = None if mask_path is None else Path(mask_path)
    if batch_size < 1 or 0 < client.max_batch_size < batch_size:
        raise ClientError(
            f"batch size must be between 1 and {client.max_batch_size} (max_batch_size of "
            f"model {client.model!r}), got {batch_size}"
        )
    settings = EncoderSettings(crf=crf, preset=preset, encoder=encoder)
    codec = video_codec_for(out_path)
    check_settings_for(codec, settings)
    mask_codec = None if mask_path is None else video_codec_for(mask_path)
    if mask_codec is not None:
        check_settings_for(mask_codec, settings)
    _check_distinct(in_path, out_path, mask_path)
    for path in (out_path, mask_path):
        if path is not None:
            check_output_path(path, "video")
    if preview_path is not None:
        check_image_writable(preview_path)

    source_format = _probe(in_path)
    width, height = source_format.even_size
    if (width, height) != (source_format.width, source_format.height):
        log.warning(
            "'%s' is %dx%d; yuv420p H.264 needs even sizes, so the output is cropped to %dx%d",
            in_path,
            source_format.width,
            source_format.height,
            width,
            height,
        )
    if codec == "vp9":
        encoder_kind, encoder_reason = "vp9", f"{VP9_ENCODER} for WebM"
    else:
        encoder_kind, encoder_reason = choose_h264_encoder(
            encoder, width=width, height=height, rate=source_format.rate, gpu=client.cuda_device
        )
    log.info("'%s': video encoder %s (%s)", out_path, encoder_kind, encoder_reason)

    with _open_input(in_path) as source:
        in_audio = source.streams.audio[0] if source.streams.audio else None
        mask_encoder = "vp9" if mask_codec == "vp9" else encoder_kind
        if mask_codec == "h264" and encoder_kind == "vp9":
            mask_encoder = "x264"
        outputs = _Outputs(
            out_path,
            mask_path,
            source_format,
            audio_source=in_audio,
            encoder=encoder_kind,
            mask_encoder=mask_encoder,
            gpu=client.cuda_device,
            settings=settings,
        )
        # Batches in flight, oldest first: source timestamps and the upright input frames.
        pending: deque[tuple[list[int | None], _PreviewFrames]] = deque()
        preview_index = source_format.frame_count // 2
        preview_frames: tuple[np.ndarray, np.ndarray] | None = None
        frames_done = 0
        started = time.perf_counter()
        try:
            batches = _request_batches(
                resolve_decoder(decoder),
                source_format,
                batch_size,
                pending,
                outputs.write_audio if in_audio is not None else None,
                on_gpu_ok=client.shared_memory == "cuda",
                device=client.cuda_device,
            )
            results = client.blur_batches(
                batches,
                in_flight=in_flight,
                want_mask=mask_path is not None,
                parameters=parameters,
                sequence_id=sequence_id,
            )
            bar = tqdm(
                total=source_format.frame_count or None,
                unit="frame",
                desc=in_path.name,
                disable=None if progress else True,
                dynamic_ncols=True,
            )
            with bar, closing(results):
                for result in results:
                    timestamps, inputs_nhwc = pending.popleft()
                    blurred_nhwc_u8 = _to_host(result.blurred_nhwc_u8)
                    masks_nhw_u8 = _to_host(result.mask_nhw_u8)
                    for i, pts in enumerate(timestamps):
                        mask = None if masks_nhw_u8 is None else masks_nhw_u8[i]
                        # A Ctrl-C lands between frames: the count says what the file holds.
                        with _sigint_deferred():
                            outputs.write_frame(blurred_nhwc_u8[i], mask, pts)
                            frames_done += 1
                        if frames_done <= preview_index + 1:
                            preview_frames = (inputs_nhwc[i], blurred_nhwc_u8[i])
                    bar.update(len(timestamps))
        except KeyboardInterrupt:
            outputs.finish()
            log.warning("interrupted after %d frames; '%s' holds them", frames_done, out_path)
            raise
        except BaseException:
            outputs.abort()
            raise
        outputs.finish()
    seconds = time.perf_counter() - started

    if preview_path is not None and preview_frames is not None:
        write_preview(preview_path, *preview_frames, label=preview_label)
    return VideoSummary(
        frames=frames_done,
        seconds=seconds,
        audio=outputs.audio_handling,
        encoder=encoder_kind,
        encoder_reason=encoder_reason,
    )


def blurred_frames(
    client: BlurClient,
    in_path: str | Path,
    *,
    batch_size: int = 4,
    in_flight: int = 2,
    parameters: Mapping[str, ParameterValue] | None = None,
    decoder: str = "pyav",
    sequence_id: int | None = None,
) -> Iterator[tuple[list[int | None], Any]]:
    """Decode and blur ``in_path`` and yield the blurred frames, without encoding anything.

    The frames stay in this process's memory for the caller (analysis, a custom encoder, a
    preview, the benchmark's decode + blur figure). Decoding, upright rotation and batching
    are those of :func:`blur_video`; the audio and odd-size cropping are not applied.

    Args:
        client: Connected client.
        in_path: Any video PyAV/FFmpeg can decode; its first video stream is used.
        batch_size: Frames per request (per decoded batch for a stream model).
        in_flight: Requests outstanding at once (batches ahead for a stream model).
        parameters: Optional server parameters.
        decoder: ``pyav``, ``nvdec``, ``dali`` or ``auto`` (see :func:`blur_video`).
        sequence_id: For a stream model, the video's sequence ID (None: a random one).

    Yields:
        ``(source timestamps, blurred [B, H, W, 3] uint8)`` per batch, in input order; the
        frames are NumPy arrays, or CuPy arrays in the client's GPU memory when a GPU decoder
        is used with ``shared_memory="cuda"``.

    Raises:
        ClientError: Unreadable input, invalid batch size, or a server-side failure.
    """
    in_path = Path(in_path)
    if batch_size < 1 or 0 < client.max_batch_size < batch_size:
        raise ClientError(
            f"batch size must be between 1 and {client.max_batch_size} (max_batch_size of "
            f"model {client.model!r}), got {batch_size}"
        )
    source_format = _probe(in_path)
    pending: deque[tuple[list[int | None], _PreviewFrames]] = deque()
    batches = _request_batches(
        resolve_decoder(decoder),
        source_format,
        batch_size,
        pending,
        None,
        on_gpu_ok=client.shared_memory == "cuda",
        device=client.cuda_device,
    )
    results = client.blur_batches(
        batches, in_flight=in_flight, parameters=parameters, sequence_id=sequence_id
    )
    with closing(results):
        for result in results:
            timestamps, _ = pending.popleft()
            yield timestamps, result.blurred_nhwc_u8


def _request_batches(
    decoder: str,
    source_format: _SourceFormat,
    batch_size: int,
    pending: deque[tuple[list[int | None], _PreviewFrames]],
    write_audio: Callable[[av.Packet], None] | None,
    *,
    on_gpu_ok: bool,
    device: int,
) -> Iterator[Any]:
    """The frames of each request: upright RGB ``[B, H, W, 3]`` uint8 batches of the first
    video stream, from ``decoder`` (:func:`bgblur_client.decoders.decode_video`): NumPy, or
    CuPy on GPU ``device`` from a GPU decoder (copied to the host unless ``on_gpu_ok``).

    Each batch is appended to ``pending`` with its source timestamps before it is yielded;
    the first audio stream's packets go to ``write_audio`` as they come (none are read when it
    is None). A frame of another size than the first is scaled to the first's (PyAV).
    """
    settings = DecodeSettings(
        batch_frames=batch_size,
        quarter_turns=source_format.quarter_turns,
        audio=write_audio is not None,
        color_matrix="bt709" if source_format.color.colorspace == 1 else "bt601",
        full_range=source_format.color.color_range == 2,  # AVCOL_RANGE_JPEG
        gpu_index=device,
        on_size_change="scale",
        label=f"video '{source_format.path}'",
    )
    for item in decode_video(decoder, source_format.path, settings):
        if not isinstance(item, DecodedBatch):
            if write_audio is not None:
                write_audio(item)
            continue
        frames = item.frames_nhwc_u8
        if item.on_gpu and not on_gpu_ok:
            frames = frames.get()
        pending.append((item.pts, _PreviewFrames(frames)))
        yield frames


def _to_host(array: Any) -> Any:
    """A NumPy array of ``array`` (CuPy arrays are copied to the host; None stays None)."""
    return array.get() if array is not None and not isinstance(array, np.ndarray) else array


class _PreviewFrames:
    """Input frames (NumPy or CuPy ``[B, H, W, 3]`` uint8) kept for the preview; a frame in GPU
    memory is copied to the host only when one is asked for."""

    def __init__(self, frames_nhwc_u8: Any) -> None:
        self._frames = frames_nhwc_u8

    def __getitem__(self, index: int) -> np.ndarray:
        return _to_host(self._frames[index])


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """SIGINT held back (this thread) until the block ends: Python raises KeyboardInterrupt
    right after it, never half way through."""
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _Outputs:
    """The blurred video (with the source's audio) and, optionally, the mask video."""

    def __init__(
        self,
        out_path: Path,
        mask_path: Path | None,
        source_format: _SourceFormat,
        *,
        audio_source: av.audio.stream.AudioStream | None,
        encoder: str = "x264",
        mask_encoder: str | None = None,
        gpu: int = 0,
        settings: EncoderSettings | None = None,
    ) -> None:
        self._source_format = source_format
        self._video = _H264Writer(
            out_path,
            source_format,
            audio_source=audio_source,
            encoder=encoder,
            gpu=gpu,
            settings=settings,
        )
        self._mask: _H264Writer | None = None
        if mask_path is not None:
            try:
                self._mask = _H264Writer(
                    mask_path,
                    source_format,
                    audio_source=None,
                    encoder=mask_encoder or encoder,
                    gpu=gpu,
                    settings=settings,
                )
            except BaseException:
                self._video.abort()
                raise
        self.audio_handling = self._video.audio_handling

    def write_frame(
        self, blurred_hwc_u8: np.ndarray, mask_hw_u8: np.ndarray | None, source_pts: int | None
    ) -> None:
        """Encode one upright result frame (and its mask when a mask video is written)."""
        pts = self._video.write_frame(_to_stored(blurred_hwc_u8, self._source_format), source_pts)
        if self._mask is not None:
            if mask_hw_u8 is None:
                raise ValueError("a mask video is being written but the result has no mask")
            self._mask.write_frame(_to_stored(mask_hw_u8, self._source_format), pts)

    def write_audio(self, packet: av.Packet) -> None:
        """Copy or re-encode one packet of the source's audio into the blurred video."""
        self._video.write_audio(packet)

    def finish(self) -> None:
        """Flush and close every file; each takes its name only when all are complete."""
        try:
            for writer in self._writers():
                writer.finish(commit_file=False)
        except BaseException:
            self.abort()
            raise
        for writer in self._writers():
            writer.commit()

    def abort(self) -> None:
        """Close and delete every file."""
        for writer in self._writers():
            writer.abort()

    def _writers(self) -> list[_H264Writer]:
        return [self._video] if self._mask is None else [self._video, self._mask]


class _H264Writer:
    """One output file: a video stream (H.264, or VP9 for WebM) and optionally the source's
    audio, written to a partial file that takes ``path``'s name on :meth:`finish`.

    ``encoder="x264"`` encodes with libx264 through PyAV; ``"nvenc"`` with ``video_encoder``
    (by default an :class:`~bgblur.video.encoders.NvencH264Encoder` on GPU ``gpu``, fed from
    host memory), whose access units are muxed as they are; ``"vp9"`` with libvpx-vp9 through
    PyAV. ``settings`` gives the CRF and preset (defaults: CRF 18, medium).
    """

    def __init__(
        self,
        path: Path,
        source_format: _SourceFormat,
        *,
        audio_source: av.audio.stream.AudioStream | None,
        encoder: str = "x264",
        gpu: int = 0,
        video_encoder: Any = None,
        settings: EncoderSettings | None = None,
    ) -> None:
        if encoder not in ("x264", "nvenc", "vp9"):
            raise ValueError(f"encoder must be 'x264', 'nvenc' or 'vp9', got {encoder!r}")
        if not path.parent.is_dir():
            raise UsageError(
                f"cannot write video '{path}': directory '{path.parent}' does not exist"
            )
        settings = settings or EncoderSettings()
        self.path = path
        self._partial = partial_path(path)
        self._committed = False
        self._source_path = source_format.path
        self._color = source_format.color
        self._frame_step = source_format.frame_step
        self._last_pts: int | None = None
        try:
            self._container = av.open(str(self._partial), "w")
        except (ValueError, OSError) as exc:
            discard(self._partial)
            raise ClientError(f"cannot write video '{path}': {exc}") from exc
        width, height = source_format.even_size
        self._track: Any = None
        try:
            if encoder == "nvenc":
                self._track = self._nvenc_track(source_format, video_encoder, gpu, settings)
                self._video = self._track.stream
            elif encoder == "vp9":
                self._video = self._vp9_stream(source_format, settings)
            else:
                self._video = add_h264_stream(
                    self._container,
                    width=width,
                    height=height,
                    rate=source_format.rate,
                    time_base=source_format.time_base,
                    color=source_format.color,
                    rotation=source_format.rotation,
                    sample_aspect_ratio=source_format.sample_aspect_ratio,
                    crf=settings.crf,
                    preset=settings.preset,
                )
            self._audio: av.audio.stream.AudioStream | None = None
            self.audio_handling: AudioHandling = "none"
            if audio_source is not None:
                if audio_source.codec_context.name in self._container.supported_codecs:
                    self._audio = self._container.add_stream_from_template(audio_source)
                    self.audio_handling = "copied"
                elif encoder == "vp9":  # WebM's audio is Opus or Vorbis; Opus runs at 48 kHz
                    self._audio = self._container.add_stream("libopus", rate=48000)
                    self._audio.layout = av.AudioLayout(f"{audio_source.layout.nb_channels}c")
                    self.audio_handling = "re-encoded"
                else:
                    self._audio = self._container.add_stream("aac", rate=audio_source.rate)
                    # The AAC encoder needs a known channel order, which sources such as
                    # AVI often lack: use FFmpeg's default layout for the channel count.
                    self._audio.layout = av.AudioLayout(f"{audio_source.layout.nb_channels}c")
                    self.audio_handling = "re-encoded"
        except (ValueError, RuntimeError) as exc:  # e.g. the format cannot hold H.264
            self._close_track()
            self._container.close()
            discard(self._partial)
            raise ClientError(f"cannot write video '{path}': {exc}") from exc
        except BaseException:
            self._close_track()
            self._container.close()
            discard(self._partial)
            raise

    def _vp9_stream(
        self, source_format: _SourceFormat, settings: EncoderSettings
    ) -> av.video.stream.VideoStream:
        width, height = source_format.even_size
        stream = self._container.add_stream(
            VP9_ENCODER, rate=source_format.rate, options=settings.vp9_options()
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = source_format.time_base
        source_format.color.apply_to(stream.codec_context)
        if source_format.sample_aspect_ratio:
            stream.codec_context.sample_aspect_ratio = source_format.sample_aspect_ratio
        if source_format.rotation:
            stream.set_display_rotation(source_format.rotation)
        return stream

    def _nvenc_track(
        self, source_format: _SourceFormat, video_encoder: Any, gpu: int, settings: EncoderSettings
    ) -> Any:
        # The NVENC path is the server library's (PyNvVideoCodec); encoder="nvenc" is chosen
        # only where it imports (bgblur_client.encoding.choose_h264_encoder).
        from bgblur.video.encoders import NvencH264Encoder, PreEncodedH264Track

        width, height = source_format.even_size
        if video_encoder is None:
            video_encoder = NvencH264Encoder(
                width,
                height,
                rate=source_format.rate,
                gop=_NVENC_GOP,
                quality=settings.crf,
                gpu=gpu,
                preset=settings.preset,
            )
        try:
            return PreEncodedH264Track(
                self._container,
                video_encoder,
                width=width,
                height=height,
                rate=source_format.rate,
                time_base=source_format.time_base,
                color_primaries=source_format.color.color_primaries,
                color_trc=source_format.color.color_trc,
                rotation=source_format.rotation,
                sample_aspect_ratio=source_format.sample_aspect_ratio,
            )
        except BaseException:
            video_encoder.close()
            raise

    def write_frame(self, image_u8: np.ndarray, source_pts: int | None) -> int:
        """Encode one RGB ``[H, W, 3]`` or gray ``[H, W]`` uint8 frame; return the pts used.

        The source pts is kept unless it is missing or not increasing (broken inputs), in
        which case the frame is placed one frame duration after the previous one.
        """
        if source_pts is None or (self._last_pts is not None and source_pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + self._frame_step
        else:
            pts = source_pts
        self._last_pts = pts
        if self._track is not None:
            self._mux(self._track.encode(image_u8, pts))
        else:
            self._mux(encode_image(self._video, image_u8, pts=pts, color=self._color))
        return pts

    def write_audio(self, packet: av.Packet) -> None:
        """Copy or re-encode one packet of the source's audio stream."""
        if self._audio is None:
            return
        if self.audio_handling == "copied":
            if packet.dts is None:  # the demuxer's end-of-stream marker
                return
            packet.stream = self._audio
            self._mux([packet])
        else:
            for frame in _decode(packet, self._source_path):
                self._mux(self._audio.encode(frame))

    def finish(self, *, commit_file: bool = True) -> None:
        """Flush the encoders and close the file; it then takes its name (``path``) unless
        ``commit_file`` is False (then :meth:`commit` does that)."""
        try:
            if self._track is not None:
                self._mux(self._track.flush())
            else:
                self._mux(self._video.encode(None))
            if self.audio_handling == "re-encoded":
                self._mux(self._audio.encode(None))
        except BaseException:
            self.abort()
            raise
        self._close_track()
        try:
            self._container.close()
        except (av.FFmpegError, OSError) as exc:
            discard(self._partial)
            raise ClientError(f"cannot write video '{self.path}': {exc}") from exc
        if commit_file:
            self.commit()

    def commit(self) -> None:
        """Give the finished file its name, replacing what was there."""
        if not self._committed:
            self._committed = True
            commit(self._partial, self.path)

    def abort(self) -> None:
        """Close and delete the partial file (the file at ``path`` is left as it was)."""
        try:
            self._close_track()
            self._container.close()
        except (av.FFmpegError, OSError):
            log.debug("closing the partial '%s' failed", self._partial, exc_info=True)
        finally:
            discard(self._partial)

    def _close_track(self) -> None:
        if self._track is not None:
            track, self._track = self._track, None
            track.close()

    def _mux(self, packets: list[av.Packet]) -> None:
        try:
            self._container.mux(packets)
        except (av.FFmpegError, OSError) as exc:
            raise ClientError(f"cannot write video '{self.path}': {exc}") from exc


def _to_stored(upright: np.ndarray, source_format: _SourceFormat) -> np.ndarray:
    """Turn an upright frame back to the stored orientation and crop it to an even size."""
    stored = np.rot90(upright, -source_format.quarter_turns)
    width, height = source_format.even_size
    return stored[:height, :width]


def _check_distinct(in_path: Path, out_path: Path, mask_path: Path | None) -> None:
    """Refuse to overwrite the input or to write two outputs to one file."""
    resolved_in = in_path.resolve()
    if out_path.resolve() == resolved_in:
        raise ClientError(f"output '{out_path}' is the input file")
    if mask_path is not None and mask_path.resolve() in (resolved_in, out_path.resolve()):
        raise ClientError(f"mask output '{mask_path}' is the input or the output file")


def _open_input(path: Path) -> av.container.InputContainer:
    if path.is_dir():
        raise UsageError(f"cannot read video '{path}': it is a directory, not a video file")
    if not path.is_file():
        raise UsageError(f"cannot read video '{path}': no such file")
    try:
        source = av.open(str(path), "r")
    except (av.FFmpegError, OSError) as exc:
        raise ClientError(f"cannot read video '{path}': {_ffmpeg_reason(exc)}") from exc
    if not source.streams.video:
        source.close()
        raise ClientError(f"cannot read video '{path}': it has no video stream")
    return source


def _probe(path: Path) -> _SourceFormat:
    """Read the first video stream's properties, decoding its first frame."""
    with _open_input(path) as source:
        stream = source.streams.video[0]
        with closing(_demux(source, path, stream, None)) as packets:
            first = next((f for p in packets for f in _decode(p, path)), None)
        if first is None:
            raise ClientError(f"cannot read video '{path}': no decodable video frame")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            log.warning("'%s' declares no frame rate; assuming %s frames/s", path, _FALLBACK_RATE)
            rate = _FALLBACK_RATE
        has_timestamps = first.pts is not None and stream.time_base is not None
        time_base = stream.time_base if has_timestamps else 1 / Fraction(rate)
        return _SourceFormat(
            path=path,
            width=first.width,
            height=first.height,
            rate=Fraction(rate),
            time_base=Fraction(time_base),
            frame_step=max(round(1 / (Fraction(rate) * time_base)), 1),
            color=ColorTags.of_frame(first),
            rotation=first.rotation,
            sample_aspect_ratio=stream.sample_aspect_ratio,
            frame_count=stream.frames,
        )


def _demux(
    source: av.container.InputContainer,
    path: Path,
    video: av.video.stream.VideoStream,
    audio: av.audio.stream.AudioStream | None,
) -> Iterator[av.Packet]:
    """Packets of the given streams; ends with one empty flush packet per stream."""
    streams = [video] if audio is None else [video, audio]
    try:
        yield from source.demux(streams)
    except av.FFmpegError as exc:
        raise ClientError(f"cannot read video '{path}': {_ffmpeg_reason(exc)}") from exc


def _decode(packet: av.Packet, path: Path) -> list[av.VideoFrame] | list[av.AudioFrame]:
    try:
        return packet.decode()
    except av.FFmpegError as exc:
        raise ClientError(f"cannot decode '{path}': {_ffmpeg_reason(exc)}") from exc


def _ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's error text without the errno and file name PyAV adds around it."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return exc.strerror.rstrip(".").lower()
    return str(exc)
