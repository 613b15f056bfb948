"""Talk to the ``background_blur`` ensembles on Triton over gRPC or HTTP.

:class:`BlurClient` checks on construction that the server is live and the model ready, so
a wrong URL or model name fails at once with a clear :class:`~bgblur_client.errors.ClientError`
instead of on the first frame. :meth:`BlurClient.blur` sends one batch and waits;
:meth:`BlurClient.blur_batches` keeps several batches in flight on worker threads (one
tritonclient connection per thread, since the HTTP client is not thread-safe) so the
caller's decoding and encoding overlap with inference, and yields results in input order.

A stream model (``background_blur_stream``: its config, or a step of the ensemble, has
``sequence_batching``) takes a video as one Triton sequence instead: :meth:`BlurClient.blur_batches`
sends each frame as its own request, in order, one at a time, under one sequence ID, with START
on the first frame and END on the last (:attr:`BlurClient.sequence_model`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bgblur_client.errors import (
    ClientError,
    ModelNotFoundError,
    RequestRejectedError,
    ServerUnreachableError,
)
from bgblur_client.shm import (
    SHARED_MEMORY_CHOICES,
    SharedMemoryChoice,
    SharedMemoryKind,
    open_regions,
    require_cupy,
    usable_shared_memory,
)
from bgblur_client.stats import StatsSnapshot

log = logging.getLogger(__name__)

ProtocolName = Literal["grpc", "http"]
ParameterValue = bool | int | float | str
# What replaces the background (BlurClient.blur's ``background``): the blur (None or "blur"),
# an (R, G, B) colour, or an image (uint8 RGB [h, w, 3], or [B, h, w, 3] one per frame).
Background = None | str | tuple[int, int, int] | np.ndarray

PROTOCOLS: tuple[ProtocolName, ...] = ("grpc", "http")
DEFAULT_MODEL = "background_blur"
# The stream ensemble: DEFAULT_MODEL's interface plus Triton sequences (masks smoothed over each
# video's frames; request parameter TEMPORAL_SMOOTHING, 0 turns it off).
STREAM_MODEL = "background_blur_stream"
TEMPORAL_SMOOTHING = "temporal_smoothing"
DEFAULT_TIMEOUT_S = 60.0
# Health and metadata calls are tiny: an unroutable host should fail fast, not after a
# generous inference timeout.
_HEALTH_TIMEOUT_S = 10.0

# Models the server serves only when asked to, and how to ask (bgblur-server's options).
OPT_IN_MODELS: dict[str, str] = {
    "background_blur_direct": "start the server with --direct-model (bgblur-server "
    "--direct-model, or TritonServer(direct_model=True))",
}
_PROBE_TIMEOUT_S = 3.0
# The request that ends a sequence after an early stop waits at most this long (gRPC; an HTTP
# connection has one timeout for all its requests, ``timeout_s``).
_END_SEQUENCE_TIMEOUT_S = 10.0

INPUT_FRAMES = "FRAMES"
INPUT_BACKGROUND = "BACKGROUND"
OUTPUT_BLURRED = "BLURRED"
OUTPUT_MASK = "MASK"
OUTPUT_FOREGROUND_SHARE = "FOREGROUND_SHARE"


def default_url(protocol: ProtocolName) -> str:
    """Triton's default local endpoint for ``protocol`` (gRPC 8001, HTTP 8000)."""
    return {"grpc": "localhost:8001", "http": "localhost:8000"}[protocol]


def how_to_serve(model: str) -> str:
    """``": start the server with ..."`` for a model served only on request, else ``""``."""
    hint = OPT_IN_MODELS.get(model)
    return f": {hint}" if hint else ""


def wrong_port_hint(url: str, protocol: ProtocolName) -> str | None:
    """When ``url`` answers the other protocol's health check, a message saying so (e.g.
    ``"localhost:8001 answers gRPC, not HTTP: use --protocol grpc or the HTTP port"``);
    None when it does not (nothing listens, or something else does)."""
    other: ProtocolName = "grpc" if protocol == "http" else "http"
    try:
        if other == "grpc":
            probe: Any = grpcclient.InferenceServerClient(url)
            try:
                live = probe.is_server_live(client_timeout=_PROBE_TIMEOUT_S)
            finally:
                probe.close()
        else:
            probe = httpclient.InferenceServerClient(
                url, connection_timeout=_PROBE_TIMEOUT_S, network_timeout=_PROBE_TIMEOUT_S
            )
            try:
                live = probe.is_server_live()
            finally:
                probe.close()
    except Exception:  # nothing speaks the other protocol there either
        return None
    if not live:
        return None
    names = {"grpc": "gRPC", "http": "HTTP"}
    return (
        f"{url} answers {names[other]}, not {names[protocol]}: use --protocol {other} or the "
        f"{names[protocol]} port (Triton's defaults: HTTP 8000, gRPC 8001)"
    )


@dataclass(frozen=True)
class BlurResult:
    """What the server returned for one request.

    The batch dimension matches the input: a single ``[H, W, 3]`` frame gives
    ``blurred_nhwc_u8`` of shape ``[H, W, 3]`` and ``mask_nhw_u8`` of shape ``[H, W]``;
    a batch ``[B, H, W, 3]`` gives ``[B, H, W, 3]`` and ``[B, H, W]``.

    Attributes:
        blurred_nhwc_u8: uint8 RGB frames with the background blurred (or replaced).
        mask_nhw_u8: uint8 foreground probability x255, or ``None`` unless requested.
        foreground_share: float32 share of each frame the person covers (mean of the mask
            / 255; about 0 for a frame with no person): ``[B]``, or a 0-d array for a single
            frame; ``None`` unless requested.
    """

    blurred_nhwc_u8: np.ndarray
    mask_nhw_u8: np.ndarray | None
    foreground_share: np.ndarray | None = None


@dataclass(frozen=True)
class _PreparedBatch:
    frames_nhwc_u8: np.ndarray
    single_frame: bool
    background_nhwc_u8: np.ndarray | None = None
    background_parameters: Mapping[str, ParameterValue] | None = None


def background_request(
    background: Background, batch: int
) -> tuple[dict[str, ParameterValue], np.ndarray | None]:
    """The request parameters and BACKGROUND tensor of :meth:`BlurClient.blur`'s
    ``background`` for a batch of ``batch`` frames.

    ``None`` or ``"blur"``: nothing (the server's blur). ``(R, G, B)`` (or ``"#RRGGBB"``):
    ``background=color`` with ``background_color="R,G,B"``. A uint8 RGB image ``[h, w, 3]``
    (or ``[1, h, w, 3]``): ``background=image`` and the image repeated for every frame (Triton
    needs every input of a request to have the same batch size); ``[batch, h, w, 3]``: one per
    frame.

    Raises:
        ValueError: anything else (a colour out of 0..255, an image of the wrong shape or dtype).
    """
    if background is None or (isinstance(background, str) and background == "blur"):
        return {}, None
    if isinstance(background, str):
        background = parse_color(background)
    if isinstance(background, tuple | list):
        color = tuple(background)
        if len(color) != 3 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) and 0 <= v <= 255
            for v in color
        ):
            raise ValueError(f"background colour must be (R, G, B) in 0..255, got {background!r}")
        return {
            "background": "color",
            "background_color": ",".join(str(int(v)) for v in color),
        }, None
    if not isinstance(background, np.ndarray):
        raise ValueError(
            "background must be None, 'blur', an (R, G, B) tuple or a uint8 RGB image, got "
            f"{type(background).__name__}"
        )
    if background.dtype != np.uint8:
        raise ValueError(f"background image must be uint8 RGB, got dtype {background.dtype}")
    images = background[np.newaxis] if background.ndim == 3 else background
    if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
        raise ValueError(
            "background image must be RGB [h, w, 3] or [B, h, w, 3], got shape "
            f"{list(background.shape)}"
        )
    if images.shape[0] not in (1, batch):
        raise ValueError(
            f"background images: {images.shape[0]} for a batch of {batch} frames (give one "
            "image, or one per frame)"
        )
    if images.shape[0] != batch:
        images = np.broadcast_to(images, (batch, *images.shape[1:]))
    return {"background": "image"}, np.ascontiguousarray(images)


def parse_color(text: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` (or ``"RRGGBB"``) -> ``(R, G, B)``.

    Raises:
        ValueError: not six hexadecimal digits.
    """
    digits = text[1:] if text.startswith("#") else text
    if len(digits) != 6 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"expected a colour #RRGGBB, got {text!r}")
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


class BlurClient:
    """A connection to the background-blur ensemble on one Triton server.

    Args:
        url: ``host:port`` without a scheme, e.g. ``"localhost:8001"``.
        protocol: ``"grpc"`` or ``"http"``; the port must be the server's port for it.
        model: Name of the ensemble model.
        timeout_s: Longest wait for one inference request, in seconds.
        shared_memory: ``"none"`` (tensors in the request), ``"system"`` (POSIX shared memory;
            client and server on one host), ``"cuda"`` (GPU memory shared through CUDA IPC;
            frames may be CuPy arrays and results come back as CuPy arrays on ``cuda_device``)
            or ``"auto"`` (the first of cuda, system, none that the server really maps, tried
            once at connect: :func:`bgblur_client.shm.usable_shared_memory`).
        cuda_device: GPU of the CUDA shared-memory regions.

    Attributes:
        max_batch_size: The model's ``max_batch_size`` from its config (0: no batching).
        sequence_model: Whether the model takes a video as a Triton sequence, one frame per
            request (its config has ``sequence_batching``, or a step of the ensemble has, as
            ``background_blur_stream``'s temporal step; by the name :data:`STREAM_MODEL` where
            a step's config cannot be read).
        shared_memory: The transport in use (``"auto"`` resolved).
        shared_memory_reason: Why that one (``"requested"`` unless it was ``"auto"``).

    Raises:
        ServerUnreachableError: Nothing answers at ``url`` over ``protocol``.
        ModelNotFoundError: The server is up but ``model`` is not ready.
        ClientError: ``url`` is not ``host:port``.
    """

    def __init__(
        self,
        url: str,
        protocol: ProtocolName = "grpc",
        model: str = DEFAULT_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        shared_memory: SharedMemoryChoice = "none",
        cuda_device: int = 0,
    ) -> None:
        if shared_memory not in SHARED_MEMORY_CHOICES:
            raise ValueError(
                f"shared_memory must be one of {SHARED_MEMORY_CHOICES}, got {shared_memory!r}"
            )
        if shared_memory == "cuda":
            require_cupy("--shared-memory cuda")
        self.shared_memory: SharedMemoryKind = "none" if shared_memory == "auto" else shared_memory
        self.shared_memory_reason = "requested"
        self.cuda_device = cuda_device
        self._regions: dict[int, Any] = {}
        self._regions_lock = threading.Lock()
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        _check_host_port(url)
        self.url = url
        self.protocol: ProtocolName = protocol
        self.model = model
        self.timeout_s = timeout_s
        self._client = self._connect()
        try:
            config = self._check_ready()
            self.max_batch_size = int(config.get("max_batch_size", 0))
            self.sequence_model = self._uses_sequences(config)
            if shared_memory == "auto":
                self.shared_memory, self.shared_memory_reason = usable_shared_memory(
                    self._client, device=cuda_device
                )
        except BaseException:
            self._client.close()
            raise

    def __enter__(self) -> BlurClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the client cannot be used afterwards."""
        self._close_regions(self._client)
        self._client.close()

    def statistics(self) -> StatsSnapshot:
        """Triton's cumulative per-model counters now (``bgblur_client.stats``): take one before
        and one after a run; ``after.since(before)`` is the per-stage split."""
        return StatsSnapshot.take(self._client)

    def _regions_for(self, client: Any) -> Any:
        """The shared-memory regions of ``client``'s connection (opened on first use)."""
        with self._regions_lock:
            regions = self._regions.get(id(client))
            if regions is None:
                regions = open_regions(self.shared_memory, client, device=self.cuda_device)
                self._regions[id(client)] = regions
            return regions

    def _close_regions(self, client: Any) -> None:
        with self._regions_lock:
            regions = self._regions.pop(id(client), None)
        if regions is not None:
            regions.close()

    def blur(
        self,
        frames_nhwc_u8: np.ndarray,
        *,
        want_mask: bool = False,
        parameters: Mapping[str, ParameterValue] | None = None,
        background: Background = None,
        want_foreground_share: bool = False,
    ) -> BlurResult:
        """Blur the background of one batch of frames and wait for the answer.

        Args:
            frames_nhwc_u8: uint8 RGB frames ``[B, H, W, 3]`` (B <= ``max_batch_size``),
                or a single frame ``[H, W, 3]``.
            want_mask: Also return the refined foreground mask.
            parameters: Optional server parameters, e.g. ``{"blur_ksize": 31}``.
            background: What replaces the background: None (the blur), an ``(R, G, B)``
                colour or ``"#RRGGBB"``, or a uint8 RGB image (``[h, w, 3]`` for every frame,
                or ``[B, h, w, 3]``), scaled by the server to cover each frame
                (:func:`background_request`).
            want_foreground_share: Also return the share of each frame the person covers.

        Returns:
            A :class:`BlurResult` with the same batch layout as the input.

        A :attr:`sequence_model` takes the batch as a whole video of its own: its frames one
        request each, in order, as one sequence (a fresh ID; START on the first, END on the
        last), so each call starts the temporal smoothing afresh.

        Raises:
            ValueError: The array is not uint8 RGB or the batch is too large.
            RequestRejectedError: The server refused the request (e.g. a bad parameter).
            ServerUnreachableError: The connection was lost.
            ClientError: No answer within ``timeout_s``.
        """
        if self.sequence_model:
            results = self._blur_sequence(
                [frames_nhwc_u8],
                in_flight=1,
                want_mask=want_mask,
                parameters=parameters,
                background=background,
                want_share=want_foreground_share,
                sequence_id=new_sequence_id(),
            )
            with closing(results):
                return next(results)
        batch = self._prepare(frames_nhwc_u8, background)
        return self._infer(
            self._client,
            batch,
            want_mask,
            _with_background(parameters, batch),
            want_foreground_share,
        )

    def blur_batches(
        self,
        batches: Iterable[np.ndarray],
        *,
        in_flight: int = 2,
        want_mask: bool = False,
        parameters: Mapping[str, ParameterValue] | None = None,
        background: Background = None,
        want_foreground_share: bool = False,
        sequence_id: int | None = None,
    ) -> Iterator[BlurResult]:
        """Blur a stream of batches with up to ``in_flight`` requests outstanding.

        ``batches`` is consumed lazily, so work done while producing a batch (decoding)
        or while handling a yielded result (encoding) overlaps with inference. Results are
        yielded in input order. Closing the generator early cancels requests not yet sent
        and waits for those already running.

        A :attr:`sequence_model` takes all the batches as one video, one Triton sequence:
        each frame is its own request, sent in order by one worker thread with never more
        than one outstanding (the ensemble may reorder concurrent requests of a sequence),
        under ``sequence_id``, START on the first frame and END on the last (the next batch is
        read before the last frame of a batch goes, to know whether it is the video's last; a
        one-frame video is START and END). ``in_flight`` is then the batches decoded ahead
        of the results. Closed early (an error, Ctrl-C), it sends nothing more of the video;
        where the server still answers, it ends the sequence by sending the last frame sent
        again with END (its result dropped), and otherwise the server frees the sequence's
        state after its idle timeout (``temporal_smoothing``: 60 s).

        Args:
            batches: Arrays as accepted by :meth:`blur` (``[B, H, W, 3]`` or ``[H, W, 3]``).
            in_flight: Most requests outstanding at once (>= 1); batches ahead for a
                :attr:`sequence_model`.
            want_mask: Also return the refined foreground masks.
            parameters: Optional server parameters, applied to every request.
            background, want_foreground_share: As :meth:`blur`, for every request.
            sequence_id: The sequence's ID (1 .. 2**64 - 1), for a :attr:`sequence_model`;
                None: a random 63-bit one (:func:`new_sequence_id`). Ignored otherwise.

        Yields:
            One :class:`BlurResult` per input batch, in order.

        Raises:
            Same as :meth:`blur`, when the failing batch's result is reached.
        """
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        if self.sequence_model:
            yield from self._blur_sequence(
                batches,
                in_flight=in_flight,
                want_mask=want_mask,
                parameters=parameters,
                background=background,
                want_share=want_foreground_share,
                sequence_id=new_sequence_id() if sequence_id is None else sequence_id,
            )
            return
        connections = _PerThreadConnections(self._connect, on_close=self._close_regions)
        pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="bgblur-infer")
        pending: deque[Future[BlurResult]] = deque()

        def infer_on_worker(batch: _PreparedBatch) -> BlurResult:
            return self._infer(
                connections.get(),
                batch,
                want_mask,
                _with_background(parameters, batch),
                want_foreground_share,
            )

        try:
            for frames in batches:
                batch = self._prepare(frames, background)
                if len(pending) == in_flight:
                    yield pending.popleft().result()
                pending.append(pool.submit(infer_on_worker, batch))
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            connections.close()

    def _blur_sequence(
        self,
        batches: Iterable[np.ndarray],
        *,
        in_flight: int,
        want_mask: bool,
        parameters: Mapping[str, ParameterValue] | None,
        background: Background,
        want_share: bool,
        sequence_id: int,
    ) -> Iterator[BlurResult]:
        """:meth:`blur_batches` for a :attr:`sequence_model`: one sequence, one frame per
        request, one request outstanding (a single worker thread sends them in order)."""
        if not 0 < sequence_id < 2**64:
            raise ValueError(f"sequence_id must be in 1 .. 2**64 - 1, got {sequence_id}")
        connections = _PerThreadConnections(self._connect, on_close=self._close_regions)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bgblur-sequence")
        sequence = _SequenceProgress(sequence_id)
        # Batches whose results are not yet yielded, oldest first: each one's frame requests
        # (in order) and whether it was a single [H, W, 3] frame.
        pending: deque[tuple[list[Future[BlurResult]], bool]] = deque()
        # The newest batch's last frame and that batch's requests: held back until the next
        # batch (or the end of the input) tells whether it ends the sequence.
        held: tuple[_PreparedBatch, list[Future[BlurResult]]] | None = None
        started = finished = False

        def request(frame: _PreparedBatch, start: bool, end: bool) -> BlurResult:
            return self._infer(
                connections.get(),
                frame,
                want_mask,
                _with_background(parameters, frame),
                want_share,
                sequence=(sequence_id, start, end),
                timeout_s=min(self.timeout_s, _END_SEQUENCE_TIMEOUT_S)
                if sequence.stopping
                else None,
            )

        def send_on_worker(frame: _PreparedBatch, start: bool, end: bool) -> BlurResult:
            sequence.check_unfailed()
            try:
                result = request(frame, start, end)
            except BaseException as exc:
                sequence.failed(frame, exc)
                raise
            sequence.sent(frame, end)
            return result

        def submit(frame: _PreparedBatch, into: list[Future[BlurResult]], end: bool) -> None:
            nonlocal started
            into.append(pool.submit(send_on_worker, frame, not started, end))
            started = True

        def collect(futures: list[Future[BlurResult]], single_frame: bool) -> BlurResult:
            return _joined([future.result() for future in futures], single_frame)

        try:
            for frames in batches:
                batch = self._prepare(frames, background)
                if held is not None:
                    submit(*held, end=False)
                futures: list[Future[BlurResult]] = []
                pending.append((futures, batch.single_frame))
                *firsts, last = _frames_of(batch)
                for frame in firsts:
                    submit(frame, futures, end=False)
                held = (last, futures)
                while len(pending) > in_flight:  # all but the newest are wholly submitted
                    yield collect(*pending.popleft())
            if held is not None:
                submit(*held, end=True)
                held = None
            while pending:
                yield collect(*pending.popleft())
            finished = True
        finally:
            if not finished:
                self._stop_sequence(pool, pending, sequence, request)
            pool.shutdown(wait=True, cancel_futures=True)
            connections.close()

    def _stop_sequence(
        self,
        pool: ThreadPoolExecutor,
        pending: deque[tuple[list[Future[BlurResult]], bool]],
        sequence: _SequenceProgress,
        request: Callable[[_PreparedBatch, bool, bool], BlurResult],
    ) -> None:
        """After an early stop: drop the frames not yet sent, wait for the one running, and
        end the sequence where the server still answers (its last frame again, flagged END,
        the result dropped; a shorter timeout). Otherwise the server frees it when idle."""
        futures = [future for futures, _ in pending for future in futures]
        for future in futures:
            future.cancel()
        concurrent.futures.wait(futures)
        frame = sequence.frame_to_end()
        if frame is None:
            return
        sequence.stopping = True
        try:
            pool.submit(request, frame, False, True).result()
        except Exception as exc:
            log.info(
                "could not end sequence %d (the server frees it when idle): %s",
                sequence.sequence_id,
                _describe(exc),
            )
        else:
            log.debug("ended sequence %d early", sequence.sequence_id)

    def _connect(self) -> grpcclient.InferenceServerClient | httpclient.InferenceServerClient:
        if self.protocol == "grpc":
            return grpcclient.InferenceServerClient(self.url)
        return httpclient.InferenceServerClient(
            self.url,
            connection_timeout=min(self.timeout_s, _HEALTH_TIMEOUT_S),
            network_timeout=self.timeout_s,
        )

    def _check_ready(self) -> dict[str, Any]:
        """Check liveness and model readiness; return the model's config (JSON)."""
        grpc_kwargs: dict[str, Any] = (
            {"client_timeout": min(self.timeout_s, _HEALTH_TIMEOUT_S)}
            if self.protocol == "grpc"
            else {}
        )
        try:
            live = self._client.is_server_live(**grpc_kwargs)
        # Connection failures surface as tritonclient, socket, gevent or HTTP-parser errors
        # (the last when the port speaks the other protocol); all mean "not reachable".
        except Exception as exc:
            hint = wrong_port_hint(self.url, self.protocol)
            if hint is not None:
                raise ServerUnreachableError(hint) from exc
            raise ServerUnreachableError(
                f"cannot reach Triton at {self.url} over {self.protocol}: {_describe(exc)}"
                " — is the server running? (make serve)"
            ) from exc
        if not live:
            raise ServerUnreachableError(f"Triton at {self.url} answers but is not live")
        try:
            if not self._client.is_model_ready(self.model, **grpc_kwargs):
                raise ModelNotFoundError(self._model_not_ready_message(grpc_kwargs))
            return self._model_config(self.model)
        except InferenceServerException as exc:
            raise ClientError(
                f"cannot query model {self.model!r} on {self.url}: {_describe(exc)}"
            ) from exc

    def _model_config(self, name: str) -> dict[str, Any]:
        """``name``'s config as JSON (Triton's field names)."""
        if self.protocol == "grpc":
            timeout = min(self.timeout_s, _HEALTH_TIMEOUT_S)
            reply = self._client.get_model_config(name, as_json=True, client_timeout=timeout)
            return reply["config"]
        return self._client.get_model_config(name)

    def _uses_sequences(self, config: dict[str, Any]) -> bool:
        """Whether ``config``'s model (or a step of the ensemble) is sequence-batched."""
        if "sequence_batching" in config:
            return True
        steps = config.get("ensemble_scheduling", {}).get("step", [])
        for name in {step.get("model_name") for step in steps} - {None, self.model}:
            try:
                if "sequence_batching" in self._model_config(name):
                    return True
            except InferenceServerException:  # a step's config hidden: go by the name
                return self.model == STREAM_MODEL
        return False

    def _model_not_ready_message(self, grpc_kwargs: dict[str, Any]) -> str:
        try:
            if self.protocol == "grpc":
                index = self._client.get_model_repository_index(as_json=True, **grpc_kwargs)
                entries = index.get("models", [])
            else:
                entries = self._client.get_model_repository_index()
        except InferenceServerException:
            # The repository API is restricted (the launcher's locked-down default).
            return (
                f"model {self.model!r} is not ready on {self.url} (the server does not list "
                f"its models to clients){how_to_serve(self.model)}"
            )
        available = sorted({e["name"] for e in entries if e.get("state") == "READY"})
        own = next((e for e in entries if e["name"] == self.model), None)
        state = ""
        if own is not None:  # known to the server but not loaded: say why
            state = f" ({own.get('state', 'UNKNOWN')}: {own.get('reason') or 'no reason given'})"
        return (
            f"model {self.model!r} is not ready on {self.url}{state}; available: {available}"
            f"{how_to_serve(self.model)}"
        )

    def _prepare(self, frames_nhwc_u8: np.ndarray, background: Background = None) -> _PreparedBatch:
        on_gpu = type(frames_nhwc_u8).__module__.startswith("cupy")
        if on_gpu and self.shared_memory != "cuda":
            raise ValueError("CuPy frames need shared_memory='cuda'")
        if not isinstance(frames_nhwc_u8, np.ndarray) and not on_gpu:
            raise ValueError(f"frames must be a numpy array, got {type(frames_nhwc_u8).__name__}")
        if frames_nhwc_u8.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB, got dtype {frames_nhwc_u8.dtype}")
        single_frame = frames_nhwc_u8.ndim == 3
        batch = frames_nhwc_u8[np.newaxis] if single_frame else frames_nhwc_u8
        if batch.ndim != 4 or batch.shape[-1] != 3 or 0 in batch.shape:
            raise ValueError(
                "frames must be RGB [B, H, W, 3] or a single frame [H, W, 3], "
                f"got shape {list(frames_nhwc_u8.shape)}"
            )
        if 0 < self.max_batch_size < batch.shape[0]:
            raise ValueError(
                f"batch of {batch.shape[0]} frames exceeds model {self.model!r}'s "
                f"max_batch_size {self.max_batch_size}"
            )
        extra, images = background_request(background, int(batch.shape[0]))
        if on_gpu:
            return _PreparedBatch(batch, single_frame, images, extra)
        return _PreparedBatch(np.ascontiguousarray(batch), single_frame, images, extra)

    def _infer(
        self,
        client: grpcclient.InferenceServerClient | httpclient.InferenceServerClient,
        batch: _PreparedBatch,
        want_mask: bool,
        parameters: Mapping[str, ParameterValue] | None,
        want_share: bool = False,
        *,
        sequence: tuple[int, bool, bool] | None = None,
        timeout_s: float | None = None,
    ) -> BlurResult:
        """One request: ``batch`` to the model. ``sequence``: ``(sequence ID, START, END)``
        of a sequence model's request; ``timeout_s``: gRPC's wait instead of ``timeout_s``."""
        module = grpcclient if self.protocol == "grpc" else httpclient
        frames = batch.frames_nhwc_u8
        infer_input = module.InferInput(INPUT_FRAMES, list(frames.shape), "UINT8")
        inputs = [infer_input]
        if batch.background_nhwc_u8 is not None:  # in the request whatever the transport
            images = batch.background_nhwc_u8
            background_input = module.InferInput(INPUT_BACKGROUND, list(images.shape), "UINT8")
            background_input.set_data_from_numpy(images)
            inputs.append(background_input)
        output_names = [OUTPUT_BLURRED, OUTPUT_MASK] if want_mask else [OUTPUT_BLURRED]
        output_shapes = {OUTPUT_BLURRED: tuple(frames.shape), OUTPUT_MASK: tuple(frames.shape[:3])}
        regions = self._regions_for(client) if self.shared_memory != "none" else None
        if regions is None:
            infer_input.set_data_from_numpy(frames)
            outputs = [module.InferRequestedOutput(name) for name in output_names]
        else:
            nbytes = int(np.prod(frames.shape))
            infer_input.set_shared_memory(regions.reserve(INPUT_FRAMES, nbytes), nbytes)
            regions.write(INPUT_FRAMES, frames)
            outputs = []
            for name in output_names:
                size = int(np.prod(output_shapes[name]))
                output = module.InferRequestedOutput(name)
                output.set_shared_memory(regions.reserve(name, size), size)
                outputs.append(output)
        if want_share:  # a few bytes: in the response whatever the transport
            outputs.append(module.InferRequestedOutput(OUTPUT_FOREGROUND_SHARE))
        request_kwargs: dict[str, Any] = {}
        if self.protocol == "grpc":
            request_kwargs["client_timeout"] = self.timeout_s if timeout_s is None else timeout_s
        if sequence is not None:
            sequence_id, start, end = sequence
            request_kwargs.update(sequence_id=sequence_id, sequence_start=start, sequence_end=end)
        try:
            response = client.infer(
                self.model,
                inputs,
                outputs=outputs,
                parameters=dict(parameters) if parameters else None,
                **request_kwargs,
            )
        except InferenceServerException as exc:
            raise self._translate_infer_error(exc) from exc
        except TimeoutError as exc:
            raise self._timeout_error() from exc
        except OSError as exc:
            raise ServerUnreachableError(
                f"lost the connection to Triton at {self.url}: {_describe(exc)}"
            ) from exc

        if regions is None:
            blurred = response.as_numpy(OUTPUT_BLURRED)
            mask = response.as_numpy(OUTPUT_MASK) if want_mask else None
        else:
            blurred = regions.read(OUTPUT_BLURRED, output_shapes[OUTPUT_BLURRED], np.uint8)
            mask = (
                regions.read(OUTPUT_MASK, output_shapes[OUTPUT_MASK], np.uint8)
                if want_mask
                else None
            )
            if isinstance(frames, np.ndarray) and not isinstance(blurred, np.ndarray):
                # CUDA regions, host frames: answer on the host like the other transports.
                blurred = blurred.get()
                mask = None if mask is None else mask.get()
        if blurred is None or blurred.shape != frames.shape or blurred.dtype != np.uint8:
            got = "nothing" if blurred is None else f"{blurred.dtype} {list(blurred.shape)}"
            raise ClientError(
                f"server returned {got} for {OUTPUT_BLURRED}, expected uint8 {list(frames.shape)}"
            )
        if want_mask and (mask is None or mask.shape != frames.shape[:3]):
            got = "nothing" if mask is None else str(list(mask.shape))
            raise ClientError(
                f"server returned {got} for {OUTPUT_MASK}, expected {list(frames.shape[:3])}"
            )
        share = None
        if want_share:
            share = response.as_numpy(OUTPUT_FOREGROUND_SHARE)
            if share is None or share.size != frames.shape[0]:
                got = "nothing" if share is None else str(list(share.shape))
                raise ClientError(
                    f"server returned {got} for {OUTPUT_FOREGROUND_SHARE}, expected "
                    f"[{frames.shape[0]}, 1]"
                )
            share = share.reshape(frames.shape[0]).astype(np.float32, copy=False)
        if batch.single_frame:
            return BlurResult(
                blurred[0], None if mask is None else mask[0], None if share is None else share[0]
            )
        return BlurResult(blurred, mask, share)

    def _translate_infer_error(self, exc: InferenceServerException) -> ClientError:
        status = exc.status()
        if status is None:  # raised by tritonclient itself before sending
            return ClientError(f"invalid request: {_describe(exc)}")
        if status == "StatusCode.UNAVAILABLE":
            return ServerUnreachableError(
                f"lost the connection to Triton at {self.url}: {_describe(exc)}"
            )
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return self._timeout_error()
        return RequestRejectedError(exc.message() or str(exc), status)

    def _timeout_error(self) -> ClientError:
        return ClientError(f"no answer from Triton at {self.url} within {self.timeout_s:g} s")


class _PerThreadConnections:
    """Lazily opens one tritonclient connection per worker thread; closes them all."""

    def __init__(
        self, connect: Callable[[], Any], on_close: Callable[[Any], None] | None = None
    ) -> None:
        self._connect = connect
        self._on_close = on_close
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Any] = []

    def get(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._connect()
            self._local.client = client
            with self._lock:
                self._opened.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for client in opened:
            if self._on_close is not None:
                self._on_close(client)
            client.close()


def new_sequence_id() -> int:
    """A random sequence ID: a non-zero 63-bit integer (fits Triton's uint64 and int64)."""
    return secrets.randbits(63) or 1


class _SequenceProgress:
    """What a sequence's worker has sent: the last frame, whether the sequence is open on the
    server (a request of it sent, END not yet answered), and the first failure."""

    def __init__(self, sequence_id: int) -> None:
        self.sequence_id = sequence_id
        self.stopping = False  # stopped early: the request that ends it is next
        self._lock = threading.Lock()
        self._last_frame: _PreparedBatch | None = None
        self._open = False
        self._failure: BaseException | None = None

    def sent(self, frame: _PreparedBatch, end: bool) -> None:
        with self._lock:
            self._last_frame, self._open = frame, not end

    def failed(self, frame: _PreparedBatch, exc: BaseException) -> None:
        with self._lock:
            self._failure = self._failure or exc
            self._open = True  # the failed request may have started the sequence
            if self._last_frame is None:
                self._last_frame = frame

    def check_unfailed(self) -> None:
        """Raise when an earlier frame failed: nothing more of the video is sent then (the
        caller meets that failure first, the results being in order)."""
        with self._lock:
            if self._failure is not None:
                raise ClientError(f"not sent: an earlier frame failed ({self._failure})")

    def frame_to_end(self) -> _PreparedBatch | None:
        """The frame to send again with END; None when nothing is open, or the server does
        not answer (lost connection, timeout: the sequence then goes at its idle timeout)."""
        with self._lock:
            answers = self._failure is None or isinstance(self._failure, RequestRejectedError)
            return self._last_frame if self._open and answers else None


def _frames_of(batch: _PreparedBatch) -> list[_PreparedBatch]:
    """``batch`` as one-frame batches (``[1, H, W, 3]`` views), one per request."""
    frames = batch.frames_nhwc_u8
    images = batch.background_nhwc_u8
    return [
        _PreparedBatch(
            frames[i : i + 1],
            False,
            None if images is None else images[i : i + 1],
            batch.background_parameters,
        )
        for i in range(len(frames))
    ]


def _joined(results: list[BlurResult], single_frame: bool) -> BlurResult:
    """One-frame results joined into the batch's (or a single frame's) :class:`BlurResult`."""
    if single_frame:
        (only,) = results
        return BlurResult(
            only.blurred_nhwc_u8[0],
            None if only.mask_nhw_u8 is None else only.mask_nhw_u8[0],
            None if only.foreground_share is None else only.foreground_share[0],
        )
    first = results[0].blurred_nhwc_u8
    xp = np if isinstance(first, np.ndarray) else require_cupy("CUDA shared memory")

    def join(arrays: list[Any]) -> Any:
        return None if arrays[0] is None else xp.concatenate(arrays)

    return BlurResult(
        join([r.blurred_nhwc_u8 for r in results]),
        join([r.mask_nhw_u8 for r in results]),
        None
        if results[0].foreground_share is None
        else np.concatenate([r.foreground_share for r in results]),
    )


def _with_background(
    parameters: Mapping[str, ParameterValue] | None, batch: _PreparedBatch
) -> dict[str, ParameterValue] | None:
    """``parameters`` plus those of the batch's background (:func:`background_request`)."""
    if not batch.background_parameters:
        return dict(parameters) if parameters else None
    return {**(parameters or {}), **batch.background_parameters}


def _check_host_port(url: str) -> None:
    """Raise :class:`ClientError` unless ``url`` is ``host:port`` (IPv6 hosts in brackets)."""
    host, _, port = url.rpartition(":")
    if not host or "/" in url or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClientError(f"the server URL must be host:port, e.g. localhost:8001; got {url!r}")


def _describe(exc: BaseException) -> str:
    """One-line text of an exception, falling back to its type when it has no message."""
    text = (exc.message() if isinstance(exc, InferenceServerException) else None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
