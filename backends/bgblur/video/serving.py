"""The decoupled ``background_blur_video`` model's logic (its ``model.py`` is a thin adapter).

Protocol (one request per video file; gRPC streaming, ``tritonclient.grpc`` ``start_stream`` /
``async_stream_infer``; the model is decoupled so HTTP ``infer`` cannot call it):

- request: ``VIDEO`` UINT8 ``[N]``, the whole input file's bytes (at most ``max_input_bytes``);
  optional request parameters: ``batch_size``, ``crf``, ``gop_seconds``, ``chunk_bytes``,
  ``encoder`` (``auto``: NVENC where the instance's GPU has one, else libx264; ``nvenc``;
  ``x264``) (:class:`~bgblur.video.transcode.VideoOptions`) and any blur parameter of
  :class:`~bgblur.parameters.BlurParams` (``blur_sigma``, ``soft_mask``, ...) and
  ``temporal_smoothing`` (0..0.95, default 0.6: the masks are smoothed over the video, each
  frame a BLS request to ``background_blur_stream`` under a sequence of the session's own; 0:
  each batch one request to the stateless ``background_blur``, the highest throughput).
- responses, streamed as the output is produced: ``VIDEO_CHUNK`` UINT8 ``[M]`` (the next bytes
  of the output, a fragmented MP4: concatenate them in order) and ``FRAMES_DONE`` INT64 ``[1]``
  (frames encoded so far). The last response carries Triton's final flag (with
  ``enable_empty_final_response`` the client sees ``triton_final_response: true``).
- errors: one response with ``INVALID_ARG`` (empty, unreadable, corrupt, truncated input, no
  video stream, unsupported codec, too large, bad parameter) or ``INTERNAL`` / ``UNAVAILABLE``,
  flagged final. A stream may fail after some chunks were sent (corruption found mid-file).

Chunked input (a live or piped stream; Triton's sequence ID, tritonclient's ``sequence_id``,
``sequence_start``, ``sequence_end``): requests sharing a sequence ID carry the stream's bytes
in order, the first flagged START (with the parameters), the last END (its ``VIDEO`` may be
empty). The session starts with the first chunk and decodes as the rest arrives
(:mod:`bgblur.video.growing`: the format must be streamable, e.g. fragmented MP4, MPEG-TS,
Matroska/WebM). All output goes to the START request's responses, as above; every other request
gets one empty response flagged final once its bytes are queued (the acknowledgement a client
paces itself on), or an error: no open stream for that sequence ID, the stream over
``max_input_bytes`` or ``max_session_bytes``. A stream is stopped with an error, and forgotten,
when it has had no chunk for ``chunk_timeout_s``, is still open ``max_stream_seconds`` after
its START, brings less than ``min_stream_bytes_per_s`` on average since its START once older
than ``stream_rate_grace_s``, or its START request is cancelled. At most ``max_streams``
streams are open at once (a START beyond: UNAVAILABLE), so whole files keep the other sessions.
A request with both flags, or without a sequence ID, is a whole file. The sequence ID routes
nothing: the chunks of a stream must reach the same instance, which one instance of this model
per server guarantees (the default on one GPU or the CPU; a server over several GPUs runs one
per GPU: send whole files there).

Each session (a whole-file request, or a chunked stream from its START) runs on a worker thread
(``execute`` returns at once), at most ``max_sessions`` at a time per instance (more wait in
line). Its input plus its frame buffers (:func:`bgblur.video.transcode.plan_frames`) must fit
``max_session_bytes``, or it fails with INVALID_ARG naming the limit. Everything a session
holds (input copy, decoder, encoder, buffers) belongs to that thread and is released when it
ends: finished, failed, or cancelled (the client cancelled or disconnected: Triton marks the
request cancelled, the loop sees it between batches and stops). Nothing is kept between
sessions; a chunked stream's entry (its input so far) lives from its START to its END, failure,
cancellation or timeout."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bgblur.device import Device
from bgblur.errors import InvalidInputError, ModelUnavailableError
from bgblur.parameters import BlurParams, temporal_smoothing_from
from bgblur.serving.triton_io import error_response, output_tensor, request_parameters
from bgblur.video.growing import GrowingBytes
from bgblur.video.transcode import VideoOptions, transcode
from bgblur_client.decoders import DECODERS, decoder_names

LOG = logging.getLogger("bgblur.video")

INPUT_VIDEO = "VIDEO"
OUTPUT_CHUNK = "VIDEO_CHUNK"
OUTPUT_FRAMES_DONE = "FRAMES_DONE"
ENSEMBLE = "background_blur"
STREAM_ENSEMBLE = "background_blur_stream"
BLUR_MODES = ("bls", "in_process")
DECODER_CHOICES = ("auto", *decoder_names("server"))


@dataclass(frozen=True)
class VideoModelSettings:
    """Model-level settings: config.pbtxt ``parameters`` of the same names (their comments
    there, and docs/reliability.md, say why each default).

    Attributes:
        blur: ``"bls"`` (BLS requests to the served ensembles: shares their instances,
            batching and GPU memory; with temporal smoothing on, the default, each frame is a
            request to ``background_blur_stream`` under the session's own sequence ID, else
            each batch is one request to ``background_blur``) or ``"in_process"`` (this
            instance builds its own ``BackgroundBlurPipeline`` and ``TemporalSmoother``: no
            hops, its own network copy).
        decoder: ``"auto"`` (NVDEC on a GPU instance when PyNvVideoCodec imports, else PyAV),
            ``"pyav"`` or ``"nvdec"``.
        segmentation_model: the network of ``in_process`` (the launcher keeps it equal to the
            ensemble's).
        max_sessions: videos transcoded at once per instance (whole files and chunked streams).
        max_streams: chunked streams open at once per instance (received, queued or running),
            at most ``max_sessions``; a START beyond it is refused (UNAVAILABLE). Below
            ``max_sessions``, whole files always find a free session.
        max_input_bytes: largest accepted ``VIDEO`` (a chunked stream: all its chunks).
        max_session_bytes: the most host memory one session may take (bytes): its input (a
            chunked stream's so far) plus its frame buffers
            (:attr:`bgblur.video.transcode.FramePlan.frame_bytes`); a session over it is refused
            (INVALID_ARG naming the setting).
        chunk_timeout_s: a chunked stream with no chunk for this long is stopped.
        max_stream_seconds: a chunked stream still open (no END) this long after its START is
            stopped, however fast its chunks come.
        min_stream_bytes_per_s: a chunked stream's average input rate since its START, checked
            once it is ``stream_rate_grace_s`` old; a stream under it is stopped.
        stream_rate_grace_s: the start-up time before ``min_stream_bytes_per_s`` applies.
    """

    blur: str = "bls"
    decoder: str = "auto"
    segmentation_model: str = "selfie_general"
    max_sessions: int = 4
    max_streams: int = 2
    max_input_bytes: int = 1 << 30
    max_session_bytes: int = 2 << 30
    chunk_timeout_s: float = 60.0
    max_stream_seconds: float = 3600.0
    min_stream_bytes_per_s: int = 8192
    stream_rate_grace_s: float = 30.0

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> VideoModelSettings:
        """The settings of config.pbtxt ``parameters`` (missing keys: the defaults above).

        Raises:
            ValueError: a value that does not parse or is out of range, naming the key.
        """
        defaults = cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = parameters.get(f.name)
            if raw is None:
                continue
            kind = type(getattr(defaults, f.name))
            try:
                values[f.name] = kind(raw) if kind is not int else int(str(raw).strip())
            except ValueError:
                raise ValueError(
                    f"background_blur_video parameter {f.name!r} must be {kind.__name__}, "
                    f"got {raw!r}"
                ) from None
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(
                    f"background_blur_video parameter {name!r} must be {allowed}, got "
                    f"{getattr(self, name)!r}"
                )

        need(self.blur in BLUR_MODES, "blur", f"one of {BLUR_MODES}")
        need(self.decoder in DECODER_CHOICES, "decoder", f"one of {DECODER_CHOICES}")
        need(self.max_sessions >= 1, "max_sessions", ">= 1")
        need(
            0 <= self.max_streams <= self.max_sessions,
            "max_streams",
            f"in [0, max_sessions = {self.max_sessions}]",
        )
        need(self.max_input_bytes >= 1, "max_input_bytes", ">= 1")
        need(self.max_session_bytes >= 1, "max_session_bytes", ">= 1")
        for name in ("chunk_timeout_s", "max_stream_seconds"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) > 0, name, "> 0")
        need(self.min_stream_bytes_per_s >= 0, "min_stream_bytes_per_s", ">= 0 (0: no minimum)")
        need(
            math.isfinite(self.stream_rate_grace_s) and self.stream_rate_grace_s >= 0,
            "stream_rate_grace_s",
            ">= 0",
        )


@dataclass(frozen=True)
class _Session:
    video_bytes: np.ndarray | GrowingBytes
    options: VideoOptions
    blur_params: BlurParams
    blur_overrides: dict[str, Any]
    temporal_smoothing: float = 0.0  # of the frames' masks over the video (0: off)
    stream_key: Any = None  # the sequence ID of a chunked stream


@dataclass
class _OpenStream:
    """A chunked stream still receiving chunks (times: ``time.monotonic()`` seconds)."""

    growing: GrowingBytes
    start_sender: Any
    token: str = ""
    opened: float = field(default_factory=time.monotonic)
    last_chunk: float = field(default_factory=time.monotonic)


# The secret that binds a chunked stream's chunks to the client that opened it: the START
# request's parameter, repeated on every chunk (bgblur_client.server_video sends it).
STREAM_TOKEN = "stream_token"
MIN_STREAM_TOKEN_CHARS = 16
# TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END (tritonserver.h)
_SEQUENCE_START, _SEQUENCE_END = 1, 2


class VideoModel:
    """What ``model_repository/background_blur_video/1/model.py`` delegates to.

    Args:
        pb_utils: ``triton_python_backend_utils`` (exists only inside the stub: passed in).
        device: the instance's device (``Device.from_triton_args``).
        settings: model-level settings.
    """

    def __init__(self, pb_utils: Any, device: Device, settings: VideoModelSettings) -> None:
        self.pb_utils = pb_utils
        self.device = device
        self.settings = settings
        self._pool = ThreadPoolExecutor(
            max_workers=settings.max_sessions, thread_name_prefix="bgblur-video-session"
        )
        self._stopping = threading.Event()
        self._pipeline: Any = None
        self._smoother: Any = None
        self._pipeline_lock = threading.Lock()
        self._streams: dict[Any, _OpenStream] = {}
        self._stream_sessions = 0  # chunked streams from their START to their session's end
        self._streams_lock = threading.Lock()
        self._watchdog = threading.Thread(
            target=self._watch_streams, name="bgblur-video-streams", daemon=True
        )
        self._watchdog.start()

    # -- Triton entry points ------------------------------------------------------------------

    def execute(self, requests: list[Any]) -> None:
        """Start one session per request; answers go through each request's response sender."""
        pb_utils = self.pb_utils
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            try:
                key, flags = _sequence_of(request)
                whole = key is None or flags & (_SEQUENCE_START | _SEQUENCE_END) == (
                    _SEQUENCE_START | _SEQUENCE_END
                )
                if whole:
                    self._pool.submit(self._serve, self._prepare(request), sender)
                elif flags & _SEQUENCE_START:
                    self._pool.submit(self._serve, self._open_stream(request, key, sender), sender)
                else:
                    self._add_chunk(request, key, end=bool(flags & _SEQUENCE_END))
                    sender.send(flags=final)  # queued: the acknowledgement
            except InvalidInputError as exc:
                sender.send(error_response(pb_utils, str(exc), invalid_arg=True), flags=final)
            except ModelUnavailableError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.UNAVAILABLE)
                sender.send(pb_utils.InferenceResponse(error=error), flags=final)
        return None

    def finalize(self) -> None:
        """Stop running sessions at their next batch and drop queued ones."""
        self._stopping.set()
        with self._streams_lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.growing.abort("the server is shutting down")
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._watchdog.join(timeout=5)

    # -- one request --------------------------------------------------------------------------

    def _video_bytes(self, request: Any) -> np.ndarray:
        """The request's ``VIDEO`` (a view of the request's memory: copy what is kept)."""
        tensor = self.pb_utils.get_input_tensor_by_name(request, INPUT_VIDEO)
        if tensor is None:
            raise InvalidInputError(f"missing input tensor {INPUT_VIDEO!r}")
        if not tensor.is_cpu():
            raise InvalidInputError(f"{INPUT_VIDEO} must be sent in host memory")
        view = np.from_dlpack(tensor)
        if view.dtype != np.uint8 or view.ndim != 1:
            raise InvalidInputError(
                f"{INPUT_VIDEO} must be UINT8 [N] (the file's bytes), got {view.dtype} "
                f"{list(view.shape)}"
            )
        if view.size > self.settings.max_input_bytes:
            raise InvalidInputError(
                f"{INPUT_VIDEO} is {view.size:,} bytes; at most "
                f"{self.settings.max_input_bytes:,} are accepted per request (max_input_bytes)"
            )
        if view.size > self.settings.max_session_bytes:
            raise InvalidInputError(
                f"{INPUT_VIDEO} is {view.size:,} bytes, over the session limit "
                f"max_session_bytes = {self.settings.max_session_bytes:,}"
            )
        return view

    def _prepare(self, request: Any, video: np.ndarray | GrowingBytes | None = None) -> _Session:
        if video is None:
            # The request's memory is not ours once execute returns: keep a copy.
            video = np.array(self._video_bytes(request), copy=True)
        parameters = request_parameters(request)
        parameters.pop(STREAM_TOKEN, None)
        options, rest = VideoOptions.split_parameters(parameters)
        blur_params = BlurParams().with_overrides(rest)
        smoothing = temporal_smoothing_from(rest)
        return _Session(video, options, blur_params, rest, temporal_smoothing=smoothing)

    # -- chunked streams ----------------------------------------------------------------------

    def _open_stream(self, request: Any, key: Any, sender: Any) -> _Session:
        """A START request: a session over a stream that grows with the next requests."""
        token = request_parameters(request).get(STREAM_TOKEN)
        if not isinstance(token, str) or len(token) < MIN_STREAM_TOKEN_CHARS:
            raise InvalidInputError(
                f"a chunked stream's START needs a {STREAM_TOKEN!r} parameter of at least "
                f"{MIN_STREAM_TOKEN_CHARS} random characters (e.g. secrets.token_urlsafe(16)); "
                "every chunk of the stream carries the same"
            )
        settings = self.settings
        if settings.max_input_bytes <= settings.max_session_bytes:
            growing = GrowingBytes(settings.max_input_bytes, "max_input_bytes")
        else:
            growing = GrowingBytes(settings.max_session_bytes, "max_session_bytes")
        growing.append(memoryview(self._video_bytes(request)).cast("B"))
        session = self._prepare(request, growing)
        with self._streams_lock:
            if key in self._streams:
                raise InvalidInputError(
                    f"sequence {key!r} already has an open video stream: a new stream needs a "
                    "new sequence ID"
                )
            if self._stream_sessions >= settings.max_streams:
                raise ModelUnavailableError(
                    f"all {settings.max_streams} chunked-stream sessions of this server are in "
                    "use (max_streams): retry later, or send the video whole in one request"
                )
            self._streams[key] = _OpenStream(growing, sender, token=token)
            self._stream_sessions += 1
        return dataclasses.replace(session, stream_key=key)

    def _add_chunk(self, request: Any, key: Any, *, end: bool) -> None:
        view = self._video_bytes(request)
        token = request_parameters(request).get(STREAM_TOKEN)
        with self._streams_lock:
            stream = self._streams.get(key)
            if stream is not None and not (
                isinstance(token, str) and hmac.compare_digest(token, stream.token)
            ):
                # Another client's chunk under this sequence ID: refused, the stream untouched.
                raise InvalidInputError(
                    f"this chunk's {STREAM_TOKEN!r} is not the one its stream was opened with: "
                    "only the client that sent the START may add to a stream"
                )
            if stream is not None and end:
                del self._streams[key]  # complete: nothing left to time out
        if stream is None:
            raise InvalidInputError(
                f"no open video stream for sequence {key!r}: its first request carries the "
                "START flag (sequence_start), and a stream that ended, failed or timed out "
                "takes no more chunks"
            )
        stream.last_chunk = time.monotonic()
        try:
            stream.growing.append(memoryview(view).cast("B"))
        except InvalidInputError:
            self._forget_stream(key, stream.growing)
            raise
        if end:
            stream.growing.finish()

    def _forget_stream(self, key: Any, growing: GrowingBytes | None = None) -> None:
        """Drop ``key``'s open stream (only if it is ``growing``'s, when given)."""
        with self._streams_lock:
            stream = self._streams.get(key)
            if stream is not None and (growing is None or stream.growing is growing):
                del self._streams[key]

    def _watch_streams(self) -> None:
        """Every 0.5 s, stop the open streams that ran out of time (:meth:`_expiry`) or whose
        START request was cancelled (the session may be waiting for a chunk, where it cannot
        see that)."""
        while not self._stopping.wait(0.5):
            now = time.monotonic()
            with self._streams_lock:
                streams = list(self._streams.items())
            for key, stream in streams:
                is_cancelled = getattr(stream.start_sender, "is_cancelled", None)
                reason = self._expiry(stream, now)
                if (
                    reason is None
                    and is_cancelled is not None
                    and stream.growing.abort_reason is None
                ):
                    try:
                        if is_cancelled():
                            reason = "the request was cancelled"
                    except Exception:  # the sender is done: the session has ended
                        reason = "the session ended"
                if reason is not None:
                    LOG.info("video stream %r stopped: %s", key, reason)
                    stream.growing.abort(reason)
                    self._forget_stream(key, stream.growing)

    def _expiry(self, stream: _OpenStream, now: float) -> str | None:
        """Why an open stream must stop now, or None: no chunk for ``chunk_timeout_s``, open
        longer than ``max_stream_seconds``, or under ``min_stream_bytes_per_s`` on average
        since its START once past ``stream_rate_grace_s``."""
        settings = self.settings
        idle, age = now - stream.last_chunk, now - stream.opened
        if idle > settings.chunk_timeout_s:
            return f"no chunk for {idle:.0f} s (chunk_timeout_s = {settings.chunk_timeout_s:g})"
        if age > settings.max_stream_seconds:
            return (
                f"the stream is still open {age:.0f} s after its START (max_stream_seconds = "
                f"{settings.max_stream_seconds:g}): send a longer video as several streams"
            )
        received = len(stream.growing)
        minimum = settings.min_stream_bytes_per_s
        if minimum and age > settings.stream_rate_grace_s and received < minimum * age:
            return (
                f"{received:,} bytes in {age:.1f} s since its START ({received / age:,.0f} "
                f"bytes/s), under min_stream_bytes_per_s = {minimum:,}"
            )
        return None

    def _serve(self, session: _Session, sender: Any) -> None:
        pb_utils = self.pb_utils
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        # Ask the sender, never the request, and never after the final flag: the request and
        # its response factory are released once the final response is sent.
        sender_cancelled = getattr(sender, "is_cancelled", None)
        final_sent = False
        chunked = isinstance(session.video_bytes, GrowingBytes)
        holds_stream_slot = chunked

        def cancelled() -> bool:
            if self._stopping.is_set():
                return True
            return not final_sent and sender_cancelled is not None and bool(sender_cancelled())

        def release() -> None:
            """Free the stream's slot and input before the final response (a client may open
            its next stream as soon as it has it)."""
            nonlocal holds_stream_slot
            if chunked:
                self._forget_stream(session.stream_key, session.video_bytes)
                session.video_bytes.abort("the session ended")
            if holds_stream_slot:
                holds_stream_slot = False
                with self._streams_lock:
                    self._stream_sessions -= 1

        blur: _SessionBlur | None = None
        try:
            blur = self._session_blur(session)
            chunks = transcode(
                session.video_bytes,
                blur,
                options=session.options,
                decoder=self._decoder(chunked=chunked),
                gpu_index=self.device.index,
                cancelled=cancelled,
                nvenc_allowed=self.device.is_gpu,
                max_session_bytes=self.settings.max_session_bytes,
            )
            for chunk in chunks:
                response = pb_utils.InferenceResponse(
                    output_tensors=[
                        output_tensor(
                            pb_utils, OUTPUT_CHUNK, np.frombuffer(chunk.data, dtype=np.uint8)
                        ),
                        output_tensor(
                            pb_utils, OUTPUT_FRAMES_DONE, np.array([chunk.frames_done], np.int64)
                        ),
                    ]
                )
                if chunk.final:
                    chunks.close()  # the transcode's buffers go before the final response
                    release()
                sender.send(response, flags=final if chunk.final else 0)
                final_sent = chunk.final
            if not final_sent:
                LOG.info("video session cancelled")
                release()
                sender.send(flags=final)
        except InvalidInputError as exc:
            release()
            sender.send(error_response(pb_utils, str(exc), invalid_arg=True), flags=final)
        except ModelUnavailableError as exc:
            release()
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.UNAVAILABLE)
            sender.send(pb_utils.InferenceResponse(error=error), flags=final)
        except Exception as exc:
            LOG.exception("video session failed")
            release()
            try:
                sender.send(
                    error_response(pb_utils, f"video transcode failed: {exc}", invalid_arg=False),
                    flags=final,
                )
            except Exception:  # the stream is gone (client disconnected): nothing to tell
                LOG.info("could not report the failure: the client is gone")
        finally:
            release()  # ended before its END chunk, or a send failed
            if blur is not None and not self._stopping.is_set():
                blur.end()

    def _decoder(self, *, chunked: bool = False) -> str:
        """The session's decoder. ``auto`` takes PyAV for a chunked stream: the NVDEC path
        demuxes the audio ahead of the video, which on a growing stream would hold the output
        back until its last chunk, while a live stream (~30 frames/s) needs no NVDEC."""
        choice = self.settings.decoder
        if choice == "auto":
            nvdec = self.device.is_gpu and not chunked and DECODERS["nvdec"].available()
            return "nvdec" if nvdec else "pyav"
        return choice

    def _session_blur(self, session: _Session) -> _SessionBlur:
        """The session's blur: BLS or in-process, with or without temporal smoothing."""
        smoothing = session.temporal_smoothing > 0.0
        if self.settings.blur == "in_process":
            pipeline, smoother = self._in_process_stages(with_smoother=smoothing)
            return _InProcessBlur(pipeline, smoother, self._pipeline_lock, session)
        overrides = _bls_parameters(session.blur_overrides)
        if smoothing:
            return _StreamBls(self._blur_bls, overrides)
        return _BatchBls(self._blur_bls, overrides)

    def _in_process_stages(self, *, with_smoother: bool) -> tuple[Any, Any]:
        """This instance's own pipeline (and smoother when asked), built on first use."""
        with self._pipeline_lock:
            if self._pipeline is None:
                from bgblur.pipeline import BackgroundBlurPipeline

                self._pipeline = BackgroundBlurPipeline(
                    self.settings.segmentation_model, self.device
                )
            if with_smoother and self._smoother is None:
                from bgblur.stages.temporal import TemporalSmoother

                spec = self._pipeline.spec  # the network input's normalisation
                self._smoother = TemporalSmoother(
                    self.device, input_mean=spec.mean, input_std=spec.std
                )
            return self._pipeline, self._smoother if with_smoother else None

    def _blur_bls(
        self,
        frames_nhwc_u8: Any,
        overrides: dict[str, Any],
        *,
        model: str = ENSEMBLE,
        correlation_id: int = 0,
        flags: int = 0,
    ) -> Any:
        """One BLS request to ``model``: ``[B, H, W, 3]`` uint8 -> BLURRED (same device)."""
        pb_utils = self.pb_utils
        if isinstance(frames_nhwc_u8, np.ndarray):
            frames = output_tensor(pb_utils, "FRAMES", frames_nhwc_u8)
        else:  # CuPy frames from NVDEC: handed on in GPU memory
            frames = pb_utils.Tensor.from_dlpack("FRAMES", frames_nhwc_u8)
        kwargs: dict[str, Any] = {"parameters": overrides} if overrides else {}
        if correlation_id:
            kwargs.update(correlation_id=correlation_id, flags=flags)
        response = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=["BLURRED"],
            inputs=[frames],
            **kwargs,
        ).exec()
        if response.has_error():
            raise RuntimeError(f"{model} failed: {response.error().message()}")
        blurred = pb_utils.get_output_tensor_by_name(response, "BLURRED")
        if blurred.is_cpu():
            return np.from_dlpack(blurred)
        import cupy

        # On the GPU, copied into memory this model owns while the response is alive (the
        # output is a view of the server's response buffer, freed with the response), so the
        # frames outlive it whatever the DLPack consumer keeps; one device copy per batch.
        owned = cupy.array(cupy.from_dlpack(blurred), copy=True)
        cupy.cuda.get_current_stream().synchronize()  # the copy is done before the release
        return owned


class _SessionBlur:
    """A session's blur: ``[B, H, W, 3]`` uint8 upright frames -> blurred, same shape and
    device, called batch after batch in the video's order; ``end()`` once the session is over
    (finished, failed or cancelled) frees what the session holds on the server."""

    def __call__(self, frames_nhwc_u8: Any) -> Any:
        raise NotImplementedError

    def end(self) -> None:
        """Nothing to free (stateless)."""


class _BatchBls(_SessionBlur):
    """Each batch one request to the stateless ``background_blur`` ensemble."""

    def __init__(self, blur_bls: Callable[..., Any], overrides: dict[str, Any]) -> None:
        self._blur_bls, self._overrides = blur_bls, overrides

    def __call__(self, frames_nhwc_u8: Any) -> Any:
        return self._blur_bls(frames_nhwc_u8, self._overrides)


class _StreamBls(_SessionBlur):
    """Each frame one request to ``background_blur_stream``, in order, one at a time (the
    ensemble may reorder concurrent requests of a sequence), under a sequence ID of the
    session's own: START on the first frame. The last frame is known only once the video has
    ended, so ``end()`` sends it again flagged END (its output is dropped): the temporal step
    frees the sequence's state then, and its idle timeout frees it if even that fails."""

    def __init__(self, blur_bls: Callable[..., Any], overrides: dict[str, Any]) -> None:
        self._blur_bls, self._overrides = blur_bls, overrides
        self.sequence_id = secrets.randbits(63) or 1
        self._last_frame: Any = None  # [1, H, W, 3], a copy

    def __call__(self, frames_nhwc_u8: Any) -> Any:
        blurred = []
        for i in range(frames_nhwc_u8.shape[0]):
            frame = frames_nhwc_u8[i : i + 1]
            blurred.append(self._send(frame, _SEQUENCE_START if self._last_frame is None else 0))
            self._last_frame = frame
        self._last_frame = self._last_frame.copy()  # the decoder may reuse the batch's memory
        xp = np if isinstance(blurred[0], np.ndarray) else _cupy()
        return xp.concatenate(blurred)

    def end(self) -> None:
        if self._last_frame is None:
            return
        frame, self._last_frame = self._last_frame, None
        try:
            self._send(frame, _SEQUENCE_END)
        except Exception as exc:  # the stream's state then goes at the temporal step's timeout
            LOG.warning("could not end sequence %d: %s", self.sequence_id, exc)

    def _send(self, frame_1hw3: Any, flags: int) -> Any:
        return self._blur_bls(
            frame_1hw3,
            self._overrides,
            model=STREAM_ENSEMBLE,
            correlation_id=self.sequence_id,
            flags=flags,
        )


class _InProcessBlur(_SessionBlur):
    """This instance's own pipeline (shared by its sessions, one batch at a time), with the
    session's frames smoothed over time by its own ``TemporalSmoother`` when ``smoother``."""

    def __init__(self, pipeline: Any, smoother: Any, lock: threading.Lock, session: _Session):
        self._pipeline, self._smoother, self._lock = pipeline, smoother, lock
        self._params, self._strength = session.blur_params, session.temporal_smoothing
        self._sequence_id = object()  # a key of this session's own
        self._started = False

    def __call__(self, frames_nhwc_u8: Any) -> Any:
        smooth = None
        if self._smoother is not None:
            start = not self._started
            self._started = True

            def smooth(probability_n1hw: Any, network_input_n3hw: Any) -> Any:
                return self._smoother(
                    self._sequence_id,
                    probability_n1hw,
                    start=start,
                    end=False,
                    strength=self._strength,
                    network_input_n3hw=network_input_n3hw,
                    out_dtype=probability_n1hw.dtype,
                )

        with self._lock:
            blurred, _ = self._pipeline(frames_nhwc_u8, self._params, smooth_probability=smooth)
        return blurred

    def end(self) -> None:
        if self._smoother is not None:
            with self._lock:
                self._smoother.end(self._sequence_id)


def _cupy() -> Any:
    import cupy

    return cupy


def _bls_parameters(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` as BLS request parameters.

    Triton 2.51's BLS ``InferenceRequest`` takes bool/int/str parameter values only: integral
    floats go as ints and the others as their exact decimal string (``repr``), which the
    steps parse back to the same float (``bgblur.parameters``).
    """
    converted: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, float):
            value = int(value) if value.is_integer() else repr(value)
        converted[key] = value
    return converted


def _sequence_of(request: Any) -> tuple[Any, int]:
    """``(sequence ID or None, request flags)`` of a Triton request (ID 0 or "": none)."""
    get_id = getattr(request, "correlation_id", None)
    key = get_id() if callable(get_id) else None
    if key in (0, "", None):
        return None, 0
    get_flags = getattr(request, "flags", None)
    return key, int(get_flags()) if callable(get_flags) else 0
