"""Blur a video file on the server: send the compressed file, receive the blurred file.

The thin-client path (``bgblur video --server-side``): no decoding or encoding here. The file's
bytes go in one request to the decoupled ``background_blur_video`` model over a gRPC stream;
the server decodes, blurs in batches and encodes (H.264 in fragmented MP4, the source's audio
copied, fps and timestamps kept) and streams the output back in chunks, which are written to
the output file as they arrive. Progress comes from each chunk's ``FRAMES_DONE``.

The server writes fragmented MP4; an ``.mp4``/``.m4v`` output is that file as it came, a
``.mov`` or ``.mkv`` output is remuxed here (PyAV, packets copied, no re-encoding) once the
stream ends, and ``.webm`` is refused before anything is sent (WebM cannot hold H.264). The
encoder settings (``crf``, ``preset``, ``encoder``: :class:`~bgblur_client.encoding.
EncoderSettings`) are the video model's request parameters of those names.

The output is received into a hidden partial file beside it and takes its name only when
complete (:mod:`bgblur_client.files`): any failure deletes the partial file and leaves an
existing output as it was. Ctrl-C cancels the request on the server (the stream is stopped
with ``cancel_requests``) and keeps the chunks received so far: fragmented MP4 plays up to
its last complete fragment (remuxed for ``.mov``/``.mkv``, when any fragment is complete).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import tritonclient.grpc as grpcclient
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from bgblur_client.encoding import EncoderSettings, check_settings_for, video_codec_for
from bgblur_client.errors import (
    ClientError,
    ModelNotFoundError,
    RequestRejectedError,
    ServerUnreachableError,
    UsageError,
)
from bgblur_client.files import check_output_path, commit, discard, partial_path
from bgblur_client.transport import (
    DEFAULT_TIMEOUT_S,
    ParameterValue,
    how_to_serve,
    wrong_port_hint,
)
from bgblur_client.video import AudioHandling, VideoSummary

log = logging.getLogger(__name__)

DEFAULT_VIDEO_MODEL = "background_blur_video"
INPUT_VIDEO = "VIDEO"
OUTPUT_CHUNK = "VIDEO_CHUNK"
OUTPUT_FRAMES_DONE = "FRAMES_DONE"
_FINAL_FLAG = "triton_final_response"
# Audio codecs MP4 holds as they are (the server copies these, re-encodes others to AAC).
_MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"}
# Outputs written as the server sends them (its fragmented MP4); others are remuxed.
_AS_SENT = (".mp4", ".m4v")


def blur_video_server_side(
    url: str,
    in_path: str | Path,
    out_path: str | Path,
    *,
    model: str = DEFAULT_VIDEO_MODEL,
    parameters: Mapping[str, ParameterValue] | None = None,
    batch_size: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    settings: EncoderSettings | None = None,
) -> VideoSummary:
    """Blur ``in_path`` on the server at ``url`` (gRPC) and write the result to ``out_path``.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint.
        in_path: Any video file the server's FFmpeg reads (H.264/HEVC/AV1/VP9/... codecs).
        out_path: Output file: ``.mp4``/``.m4v`` (the server's fragmented MP4), ``.mov`` or
            ``.mkv`` (remuxed here); it appears only when complete.
        model: The decoupled video model's name.
        parameters: Blur parameters (``blur_sigma``, ...) and the model's own
            (``batch_size``, ``crf``, ``preset``, ``gop_seconds``, ``chunk_bytes``,
            ``encoder``).
        batch_size: Frames per blur call on the server (sets ``batch_size``).
        timeout_s: Longest wait for the next chunk.
        progress: Show a progress bar.
        settings: Encoder settings, sent as ``crf``, ``preset`` (and ``encoder``); None
            leaves the model's defaults (CRF 18, medium, auto).

    Returns:
        A :class:`~bgblur_client.video.VideoSummary` (frames, seconds, audio).

    Raises:
        UsageError: The input is missing or a directory, the output's extension is not one
            of the above, the output is the input or a directory, or bad encoder settings.
        ClientError: Unreadable input, unwritable output, server down, model missing, or
            the server refused the video (corrupt, unsupported codec, bad parameter).
        KeyboardInterrupt: After cancelling the request and closing the partial output.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if in_path.is_dir():
        raise UsageError(f"cannot read video '{in_path}': it is a directory, not a video file")
    if not in_path.is_file():
        raise UsageError(f"cannot read video '{in_path}': no such file")
    if out_path.resolve() == in_path.resolve():
        raise UsageError(f"output '{out_path}' is the input file")
    _check_output(out_path, settings)
    declared_frames, audio = _probe(in_path)
    parameters = _with_settings(parameters, settings)
    request = _Request(url, model, out_path, parameters, batch_size, timeout_s, progress)
    return request.stream(
        declared_frames, audio, label=in_path.name, video_bytes=np.fromfile(in_path, np.uint8)
    )


def blur_stream_server_side(
    url: str,
    chunks: Iterable[bytes],
    out_path: str | Path,
    *,
    model: str = DEFAULT_VIDEO_MODEL,
    parameters: Mapping[str, ParameterValue] | None = None,
    batch_size: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    label: str = "stream",
    chunks_in_flight: int = 8,
    settings: EncoderSettings | None = None,
) -> VideoSummary:
    """Blur a video that arrives in pieces (a pipe, a camera, an upload) on the server at
    ``url`` and write the result to ``out_path`` as it comes back.

    The pieces go as one chunked stream (requests under one sequence ID, the first flagged
    START, an empty last one END) to ``background_blur_video``, which decodes them as they
    arrive: the stream must be readable front to back (fragmented or faststart MP4, MPEG-TS,
    Matroska/WebM, raw H.264; ``ffmpeg ... -f mpegts -`` writes one). At most
    ``chunks_in_flight`` pieces wait for the server's acknowledgement at once, so a fast
    producer is paced by the server. Arguments and errors as :func:`blur_video_server_side`.
    """
    out_path = Path(out_path)
    _check_output(out_path, settings)
    if chunks_in_flight < 1:
        raise ValueError(f"chunks_in_flight must be >= 1, got {chunks_in_flight}")
    parameters = _with_settings(parameters, settings)
    request = _Request(url, model, out_path, parameters, batch_size, timeout_s, progress)
    return request.stream(
        0, "unknown", label=label, chunks=chunks, chunks_in_flight=chunks_in_flight
    )


def _check_output(out_path: Path, settings: EncoderSettings | None) -> None:
    """Refuse, before anything is sent, an output the server's H.264 cannot go into."""
    check_settings_for(video_codec_for(out_path, server_side=True), settings or EncoderSettings())
    check_output_path(out_path, "video")


def _with_settings(
    parameters: Mapping[str, ParameterValue] | None, settings: EncoderSettings | None
) -> dict[str, ParameterValue]:
    """The request parameters with the encoder settings' (a key given twice is refused)."""
    merged: dict[str, ParameterValue] = dict(parameters or {})
    if settings is not None:
        for key, value in settings.server_parameters().items():
            if key in merged and merged[key] != value:
                raise UsageError(
                    f"parameter {key!r} given twice ({merged[key]!r} and {value!r}): "
                    f"use --{key} only"
                )
            merged[key] = value
    return merged


def remux(source_path: str | Path, target_path: str | Path) -> None:
    """Copy the video and audio packets of ``source_path`` into a new container at
    ``target_path`` (format from its extension), without re-encoding.

    A truncated source (an interrupted fragmented MP4) gives the packets up to where it
    breaks off.

    Raises:
        ClientError: The source cannot be read or the target cannot hold its streams.
    """
    try:
        with av.open(str(source_path)) as source, av.open(str(target_path), "w") as target:
            streams = [s for s in source.streams if s.type in ("video", "audio")]
            copies = {s.index: target.add_stream_from_template(s) for s in streams}
            for stream in streams:
                if stream.type == "video" and stream.average_rate:
                    # The MP4 demuxer's codec frame rate is its time base (1/15360 -> 15360):
                    # Matroska would write that as the frame duration.
                    copies[stream.index].codec_context.framerate = stream.average_rate
            try:
                for packet in source.demux(streams):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    if packet.is_corrupt:  # the last one of a cut-off file: incomplete
                        break
                    packet.stream = copies[packet.stream.index]
                    target.mux(packet)
            except av.FFmpegError:  # cut off mid-fragment: keep the packets that came whole
                pass
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ClientError(f"cannot write video '{target_path}': {exc}") from exc


@dataclass(frozen=True)
class _Request:
    """What both entry points send: where to, which model, the parameters, how to wait."""

    url: str
    model: str
    out_path: Path
    parameters: Mapping[str, ParameterValue] | None
    batch_size: int | None
    timeout_s: float
    progress: bool

    def stream(self, declared_frames: int, audio: AudioHandling, **source: Any) -> VideoSummary:
        """:func:`_stream` on a new connection (checked live, the model ready); ``source``:
        ``label`` and ``video_bytes`` or ``chunks`` (and ``chunks_in_flight``).

        The server's MP4 goes to a partial file, which becomes ``out_path`` (remuxed first for
        ``.mov``/``.mkv``) when the stream ends or is interrupted."""
        parameters: dict[str, Any] = dict(self.parameters or {})
        if self.batch_size is not None:
            parameters["batch_size"] = self.batch_size
        received = partial_path(self.out_path.with_suffix(".mp4"))
        client = grpcclient.InferenceServerClient(self.url)
        try:
            _check_ready(client, self.url, self.model)
            try:
                summary = _stream(
                    client,
                    self.url,
                    self.model,
                    received,
                    parameters,
                    self.timeout_s,
                    self.progress,
                    declared_frames,
                    audio,
                    **source,
                )
            except KeyboardInterrupt:
                if received.exists():
                    try:
                        self._finish(received)
                    except ClientError as exc:  # nothing whole arrived: nothing to keep
                        log.warning("interrupted; nothing of '%s' kept: %s", self.out_path, exc)
                raise
            self._finish(received)
            return summary
        finally:
            discard(received)
            client.close()

    def _finish(self, received: Path) -> None:
        """Give the received MP4 the output's name, remuxed into its container."""
        if self.out_path.suffix.lower() in _AS_SENT:
            commit(received, self.out_path)
            return
        target = partial_path(self.out_path)
        try:
            remux(received, target)
        except BaseException:
            discard(target)
            raise
        commit(target, self.out_path)


def _send_chunks(
    client: grpcclient.InferenceServerClient,
    model: str,
    chunks: Iterable[bytes],
    parameters: dict[str, Any],
    slots: threading.Semaphore,
    stop: threading.Event,
    answers: queue.Queue[tuple[Any, Any]],
) -> None:
    """Send ``chunks`` as one sequence (on a thread: reading them may block, e.g. a pipe)."""
    sequence_id = secrets.randbits(62) + 1
    # Binds the chunks to this client: the server refuses a chunk of another token.
    token = {"stream_token": secrets.token_urlsafe(16)}

    def send(index: int, chunk: bytes, end: bool) -> None:
        while index and not slots.acquire(timeout=0.2):  # the START takes no slot
            if stop.is_set():
                raise _StoppedError
        video_input = grpcclient.InferInput(INPUT_VIDEO, [len(chunk)], "UINT8")
        video_input.set_data_from_numpy(np.frombuffer(chunk, dtype=np.uint8))
        client.async_stream_infer(
            model,
            [video_input],
            request_id=str(index),
            sequence_id=sequence_id,
            sequence_start=index == 0,
            sequence_end=end,
            parameters={**parameters, **token} if index == 0 else token,
            enable_empty_final_response=True,
        )

    try:
        index = 0
        for chunk in chunks:
            if stop.is_set():
                return
            if chunk:
                send(index, bytes(chunk), end=False)
                index += 1
        send(index, b"", end=True)  # the END: nothing more
    except _StoppedError:
        return
    except Exception as exc:  # reading the input failed: the main loop reports it
        answers.put((None, ClientError(f"cannot read the input stream: {exc}")))


class _StoppedError(Exception):
    """The stream ended on the receiving side: stop sending."""


def _probe(path: Path) -> tuple[int, AudioHandling]:
    """(declared frame count or 0, what the server will do with the audio)."""
    try:
        with av.open(str(path)) as container:
            frames = container.streams.video[0].frames if container.streams.video else 0
            if not container.streams.audio:
                return frames, "none"
            name = container.streams.audio[0].codec_context.name
            return frames, "copied" if name in _MP4_AUDIO else "re-encoded"
    except (av.FFmpegError, OSError):
        return 0, "none"  # the server says what is wrong with it


def _check_ready(client: grpcclient.InferenceServerClient, url: str, model: str) -> None:
    try:
        live = client.is_server_live(client_timeout=10.0)
    except Exception as exc:
        hint = wrong_port_hint(url, "grpc")
        if hint is not None:
            raise ServerUnreachableError(hint) from exc
        raise ServerUnreachableError(
            f"cannot reach Triton at {url} over grpc: {exc} — is the server running? (make serve)"
        ) from exc
    if not live:
        raise ServerUnreachableError(f"Triton at {url} answers but is not live")
    try:
        ready = client.is_model_ready(model, client_timeout=10.0)
    except InferenceServerException as exc:
        raise ClientError(f"cannot query model {model!r} on {url}: {exc.message()}") from exc
    if not ready:
        raise ModelNotFoundError(f"model {model!r} is not ready on {url}{how_to_serve(model)}")


def _stream(
    client: grpcclient.InferenceServerClient,
    url: str,
    model: str,
    out_path: Path,
    parameters: dict[str, Any],
    timeout_s: float,
    progress: bool,
    declared_frames: int,
    audio: AudioHandling,
    *,
    label: str,
    video_bytes: np.ndarray | None = None,
    chunks: Iterable[bytes] | None = None,
    chunks_in_flight: int = 8,
) -> VideoSummary:
    """One whole file (``video_bytes``) or a chunked stream (``chunks``) in, the output
    written as it streams back."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    slots = threading.Semaphore(chunks_in_flight)
    stop = threading.Event()
    started = time.perf_counter()
    frames_done = 0
    cancel = True
    try:
        out_file = open(out_path, "wb")  # noqa: SIM115 (closed below, deleted on failure)
    except OSError as exc:
        client.stop_stream()
        raise ClientError(f"cannot write video '{out_path}': {exc}") from exc
    bar = tqdm(
        total=declared_frames or None,
        unit="frame",
        desc=label,
        disable=None if progress else True,
        dynamic_ncols=True,
    )
    try:
        if chunks is None:
            assert video_bytes is not None
            video_input = grpcclient.InferInput(INPUT_VIDEO, [int(video_bytes.size)], "UINT8")
            video_input.set_data_from_numpy(video_bytes)
            client.async_stream_infer(
                model,
                [video_input],
                parameters=parameters or None,
                enable_empty_final_response=True,
            )
        else:
            threading.Thread(
                target=_send_chunks,
                args=(client, model, chunks, parameters, slots, stop, answers),
                name="bgblur-video-chunks",
                daemon=True,
            ).start()
        while True:
            try:
                result, error = answers.get(timeout=timeout_s)
            except queue.Empty:
                raise ClientError(
                    f"no answer from Triton at {url} within {timeout_s:g} s"
                ) from None
            if error is not None:
                raise _translate(error, url)
            if chunks is not None and result.get_response().id != "0":
                slots.release()  # a chunk's acknowledgement: room for the next
                continue
            chunk = result.as_numpy(OUTPUT_CHUNK)
            if chunk is not None:
                out_file.write(chunk.tobytes())
                done = result.as_numpy(OUTPUT_FRAMES_DONE)
                if done is not None:
                    bar.update(int(done[0]) - frames_done)
                    frames_done = int(done[0])
            final = result.get_response().parameters.get(_FINAL_FLAG)
            if final is not None and final.bool_param:
                break
        cancel = False
    except KeyboardInterrupt:
        out_file.close()
        raise
    except BaseException:
        out_file.close()
        out_path.unlink(missing_ok=True)
        raise
    finally:
        stop.set()
        bar.close()
        client.stop_stream(cancel_requests=cancel)
    out_file.close()
    return VideoSummary(frames=frames_done, seconds=time.perf_counter() - started, audio=audio)


def _translate(error: Any, url: str) -> ClientError:
    if isinstance(error, ClientError):
        return error
    if not isinstance(error, InferenceServerException):
        return ClientError(f"video stream failed: {error}")
    status = error.status()
    message = error.message() or str(error)
    if status == "StatusCode.UNAVAILABLE" and "Socket closed" in message:
        return ServerUnreachableError(f"lost the connection to Triton at {url}: {message}")
    return RequestRejectedError(message, status)
