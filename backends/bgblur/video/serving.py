"""The decoupled ``background_blur_video`` model's logic (its ``model.py`` is a thin adapter).

Protocol (one request per video file; gRPC streaming, ``tritonclient.grpc`` ``start_stream`` /
``async_stream_infer``; the model is decoupled so HTTP ``infer`` cannot call it):

- request: ``VIDEO`` UINT8 ``[N]``, the whole input file's bytes (at most ``max_input_bytes``);
  optional request parameters: ``batch_size``, ``crf``, ``gop_seconds``, ``chunk_bytes``,
  ``encoder`` (``auto``: NVENC where the instance's GPU has one, else libx264; ``nvenc``;
  ``x264``) (:class:`~bgblur.video.transcode.VideoOptions`) and any blur parameter of
  :class:`~bgblur.config.BlurParams` (``blur_sigma``, ``soft_mask``, ...).
- responses, streamed as the output is produced: ``VIDEO_CHUNK`` UINT8 ``[M]`` (the next bytes
  of the output, a fragmented MP4: concatenate them in order) and ``FRAMES_DONE`` INT64 ``[1]``
  (frames encoded so far). The last response carries Triton's final flag (with
  ``enable_empty_final_response`` the client sees ``triton_final_response: true``).
- errors: one response with ``INVALID_ARG`` (empty, unreadable, corrupt, truncated input, no
  video stream, unsupported codec, too large, bad parameter) or ``INTERNAL`` / ``UNAVAILABLE``,
  flagged final. A stream may fail after some chunks were sent (corruption found mid-file).

Each request runs on a worker thread (``execute`` returns at once), at most ``max_sessions`` at a
time per instance (more wait in line). Everything a session holds (input copy, decoder, encoder,
buffers) belongs to that thread and is released when it ends: finished, failed, or cancelled
(the client cancelled or disconnected: Triton marks the request cancelled, the loop sees it
between batches and stops). Nothing is kept between requests.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bgblur.config import BlurParams
from bgblur.device import Device
from bgblur.errors import InvalidInputError, ModelUnavailableError
from bgblur.serving.triton_io import error_response, output_tensor, request_parameters
from bgblur.video.transcode import VideoOptions, transcode

LOG = logging.getLogger("bgblur.video")

INPUT_VIDEO = "VIDEO"
OUTPUT_CHUNK = "VIDEO_CHUNK"
OUTPUT_FRAMES_DONE = "FRAMES_DONE"
ENSEMBLE = "background_blur"
BLUR_MODES = ("bls", "in_process")
DECODER_CHOICES = ("auto", "pyav", "nvdec")


@dataclass(frozen=True)
class VideoModelSettings:
    """Model-level settings (config.pbtxt ``parameters``; ``$BGBLUR_VIDEO_BLUR`` and
    ``$BGBLUR_VIDEO_DECODER`` override ``blur`` and ``decoder``, e.g. for benchmarks).

    Attributes:
        blur: ``"bls"`` (each batch is a BLS request to the ``background_blur`` ensemble:
            shares its instances, batching and GPU memory) or ``"in_process"`` (this
            instance builds its own ``BackgroundBlurPipeline``: no hops, its own network copy;
            also used for requests with a fractional float parameter, which BLS cannot carry).
        decoder: ``"auto"`` (NVDEC on a GPU instance when PyNvVideoCodec imports, else PyAV),
            ``"pyav"`` or ``"nvdec"``.
        segmentation_model: the network of ``in_process`` (the launcher keeps it equal to the
            ensemble's).
        max_sessions: videos transcoded at once per instance.
        max_input_bytes: largest accepted ``VIDEO``.
    """

    blur: str = "bls"
    decoder: str = "auto"
    segmentation_model: str = "selfie_general"
    max_sessions: int = 4
    max_input_bytes: int = 1 << 30

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> VideoModelSettings:
        settings = cls(
            blur=os.environ.get("BGBLUR_VIDEO_BLUR") or parameters.get("blur", cls.blur),
            decoder=os.environ.get("BGBLUR_VIDEO_DECODER")
            or parameters.get("decoder", cls.decoder),
            segmentation_model=parameters.get("segmentation_model", cls.segmentation_model),
            max_sessions=int(parameters.get("max_sessions", cls.max_sessions)),
            max_input_bytes=int(parameters.get("max_input_bytes", cls.max_input_bytes)),
        )
        if settings.blur not in BLUR_MODES:
            raise ValueError(f"blur must be one of {BLUR_MODES}, got {settings.blur!r}")
        if settings.decoder not in DECODER_CHOICES:
            raise ValueError(f"decoder must be one of {DECODER_CHOICES}, got {settings.decoder!r}")
        if settings.max_sessions < 1 or settings.max_input_bytes < 1:
            raise ValueError("max_sessions and max_input_bytes must be >= 1")
        return settings


@dataclass(frozen=True)
class _Session:
    video_bytes: np.ndarray
    options: VideoOptions
    blur_params: BlurParams
    blur_overrides: dict[str, Any]


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
        self._pipeline_lock = threading.Lock()

    # -- Triton entry points ------------------------------------------------------------------

    def execute(self, requests: list[Any]) -> None:
        """Start one session per request; answers go through each request's response sender."""
        pb_utils = self.pb_utils
        for request in requests:
            sender = request.get_response_sender()
            try:
                session = self._prepare(request)
            except InvalidInputError as exc:
                sender.send(
                    error_response(pb_utils, str(exc), invalid_arg=True),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            self._pool.submit(self._serve, session, sender)
        return None

    def finalize(self) -> None:
        """Stop running sessions at their next batch and drop queued ones."""
        self._stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- one request --------------------------------------------------------------------------

    def _prepare(self, request: Any) -> _Session:
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
                f"{self.settings.max_input_bytes:,} are accepted per request"
            )
        options, rest = VideoOptions.split_parameters(request_parameters(request))
        blur_params = BlurParams().with_overrides(rest)
        # The request's memory is not ours once execute returns: keep a copy for the session.
        return _Session(np.array(view, copy=True), options, blur_params, rest)

    def _serve(self, session: _Session, sender: Any) -> None:
        pb_utils = self.pb_utils
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        # Ask the sender, never the request, and never after the final flag: the request and
        # its response factory are released once the final response is sent.
        sender_cancelled = getattr(sender, "is_cancelled", None)
        final_sent = False

        def cancelled() -> bool:
            if self._stopping.is_set():
                return True
            return not final_sent and sender_cancelled is not None and bool(sender_cancelled())

        try:
            chunks = transcode(
                session.video_bytes,
                self._blur_function(session),
                options=session.options,
                decoder=self._decoder(),
                gpu_index=self.device.index,
                cancelled=cancelled,
                nvenc_allowed=self.device.is_gpu,
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
                sender.send(response, flags=final if chunk.final else 0)
                final_sent = chunk.final
            if not final_sent:
                LOG.info("video session cancelled")
                sender.send(flags=final)
        except InvalidInputError as exc:
            sender.send(error_response(pb_utils, str(exc), invalid_arg=True), flags=final)
        except ModelUnavailableError as exc:
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.UNAVAILABLE)
            sender.send(pb_utils.InferenceResponse(error=error), flags=final)
        except Exception as exc:
            LOG.exception("video session failed")
            try:
                sender.send(
                    error_response(pb_utils, f"video transcode failed: {exc}", invalid_arg=False),
                    flags=final,
                )
            except Exception:  # the stream is gone (client disconnected): nothing to tell
                LOG.info("could not report the failure: the client is gone")

    def _decoder(self) -> str:
        choice = self.settings.decoder
        if choice == "auto":
            from bgblur.video.nvdec import nvdec_available

            return "nvdec" if self.device.is_gpu and nvdec_available() else "pyav"
        return choice

    def _blur_function(self, session: _Session) -> Callable[[Any], Any]:
        overrides = _bls_parameters(session.blur_overrides)
        if self.settings.blur == "in_process" or overrides is None:
            pipeline = self._in_process_pipeline()

            def blur_in_process(frames_nhwc_u8: Any) -> Any:
                with self._pipeline_lock:
                    blurred, _ = pipeline(frames_nhwc_u8, session.blur_params)
                return blurred

            return blur_in_process
        return lambda frames_nhwc_u8: self._blur_bls(frames_nhwc_u8, overrides)

    def _in_process_pipeline(self) -> Any:
        with self._pipeline_lock:
            if self._pipeline is None:
                from bgblur.pipeline import BackgroundBlurPipeline

                self._pipeline = BackgroundBlurPipeline(
                    self.settings.segmentation_model, self.device
                )
            return self._pipeline

    def _blur_bls(self, frames_nhwc_u8: Any, overrides: dict[str, Any]) -> Any:
        """One BLS request to the ensemble: ``[B, H, W, 3]`` uint8 -> BLURRED (same device)."""
        pb_utils = self.pb_utils
        if isinstance(frames_nhwc_u8, np.ndarray):
            frames = output_tensor(pb_utils, "FRAMES", frames_nhwc_u8)
        else:  # CuPy frames from NVDEC: handed on in GPU memory
            frames = pb_utils.Tensor.from_dlpack("FRAMES", frames_nhwc_u8)
        kwargs: dict[str, Any] = {"parameters": overrides} if overrides else {}
        response = pb_utils.InferenceRequest(
            model_name=ENSEMBLE,
            requested_output_names=["BLURRED"],
            inputs=[frames],
            **kwargs,
        ).exec()
        if response.has_error():
            raise RuntimeError(f"{ENSEMBLE} failed: {response.error().message()}")
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


def _bls_parameters(overrides: dict[str, Any]) -> dict[str, Any] | None:
    """``overrides`` as BLS request parameters, or None when BLS cannot carry them.

    Triton 2.51's BLS ``InferenceRequest`` takes bool/int/str parameter values only: integral
    floats go as ints (``BlurParams`` accepts ints for float fields); a fractional float (e.g.
    ``blur_sigma=2.5``) cannot be sent, and such a session runs the in-process pipeline.
    """
    converted: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, float):
            if not value.is_integer():
                return None
            value = int(value)
        converted[key] = value
    return converted
