"""The gRPC guard: a proxy in front of Triton's gRPC port that checks what Triton would accept
wrongly, silently, or at the cost of a crash.

Built on grpcio (the gRPC implementation tritonclient uses): a generic handler takes every method
of ``inference.GRPCInferenceService`` (and gRPC's health service) as raw bytes, parses only the
messages it checks, and forwards the bytes as they came (no re-encoding) to Triton's gRPC port,
which listens on loopback where the guard reaches it. What it checks:

1. Message size: at most ``max_message_bytes`` after decompression (grpcio refuses larger ones
   with RESOURCE_EXHAUSTED before they are buffered whole).
2. ``ModelInfer`` and every message of ``ModelStreamInfer``: the HTTP guard's checks
   (``bgblur.server.request_checks.check_grpc_infer_request``): shapes (non-negative, no
   overflow: a shape whose byte size wraps to 0 with an empty blob killed a Python stub of
   Triton 2.51), the frame limits, parameter count and sizes, one raw blob per input (Triton
   ignores a second one), ``contents`` values within their datatype (Triton truncates a uint8
   of 300). INVALID_ARGUMENT naming the field; in a stream, an error response for that
   request (the stream stays open).
3. ``SystemSharedMemoryRegister``: only regions named ``/bgblur_*`` (PERMISSION_DENIED);
   the admin key itself is Triton's check (``--grpc-restricted-protocol``), the guard forwards
   the metadata that carries it.
4. Readiness (``ServerReady``, ``ModelReady``, gRPC health): false while ``ready()`` (the
   supervisor's view) is false; inference meanwhile: UNAVAILABLE.
Deadlines are passed on; Triton's status codes and messages come back as they are.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from bgblur.server.request_checks import (
    RequestLimits,
    RequestRefusedError,
    check_grpc_infer_request,
    check_grpc_shared_memory_key,
)

LOG = logging.getLogger("bgblur.grpc_guard")

SERVICE = "/inference.GRPCInferenceService/"
STREAM_INFER = SERVICE + "ModelStreamInfer"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Metadata that belongs to the connection, not the call (grpcio sets its own upstream).
_CONNECTION_METADATA = ("user-agent", "content-type", "te", "grpc-", ":")
_NO_DEADLINE_S = 365 * 24 * 3600.0
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass(frozen=True)
class GrpcGuardSettings:
    """Where the gRPC guard listens and what it lets through.

    Attributes:
        host, port: where it listens.
        upstream: Triton's gRPC address (``127.0.0.1:<port>``).
        ready: whether the service is serving (the supervisor's view).
        max_message_bytes: the largest message (a whole video file for the video model).
        limits: the request limits (as the HTTP guard's, with room for a video file).
        max_workers: calls in progress at once (a stream holds one while it is open).
        grace_s: how long a stop waits for calls in progress.
    """

    host: str
    port: int
    upstream: str
    ready: Callable[[], bool] = lambda: True
    max_message_bytes: int = (1 << 30) + (1 << 20)
    limits: RequestLimits = field(
        default_factory=lambda: RequestLimits(
            max_body_bytes=(1 << 30) + (1 << 20), max_elements=1 << 30
        )
    )
    max_workers: int = 128
    grace_s: float = 5.0


def _forwarded_metadata(context: grpc.ServicerContext) -> list[tuple[str, str | bytes]]:
    return [
        (key, value)
        for key, value in context.invocation_metadata()
        if not key.startswith(_CONNECTION_METADATA)
    ]


def _timeout_s(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline as a timeout for the upstream call; None when it set none
    (grpcio reports "no deadline" as an enormous remainder, which upstream would overflow)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE_S else remaining


def _abort_refused(context: grpc.ServicerContext, exc: RequestRefusedError) -> None:
    context.abort(_HTTP_TO_GRPC.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)


class GrpcGuard:
    """The guard's gRPC server (its own thread pool); ``start()`` then ``stop()``."""

    def __init__(self, settings: GrpcGuardSettings) -> None:
        self.settings = settings
        message_options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ]
        # After a restart of Triton the channel reconnects within a second (gRPC's default
        # backoff grows to 2 minutes, so the guard would refuse long after Triton is back).
        reconnect = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channel_options = [*message_options, *reconnect]
        self._channel = grpc.insecure_channel(settings.upstream, options=self._channel_options)
        self._serving = True  # as ready() said last
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc-guard"),
            handlers=[_Handler(self)],
            options=[*message_options, ("grpc.so_reuseport", 0)],
        )
        self._unary: dict[str, Any] = {}
        self._lock = threading.Lock()

    def start(self) -> GrpcGuard:
        address = f"{self.settings.host}:{self.settings.port}"
        if self._server.add_insecure_port(address) == 0:
            raise OSError(f"gRPC guard: cannot listen on {address}")
        self._server.start()
        LOG.info("gRPC guard on %s -> %s", address, self.settings.upstream)
        return self

    def stop(self) -> None:
        self._server.stop(self.settings.grace_s).wait()
        self._channel.close()

    # -- forwarding -------------------------------------------------------------------------

    def _serving_now(self) -> bool:
        """``ready()``; when it turns true again (Triton restarted), a fresh upstream channel:
        the old one may still wait out its reconnect backoff and refuse calls meanwhile."""
        serving = self.settings.ready()
        with self._lock:
            if serving and not self._serving:
                old, self._unary = self._channel, {}
                self._channel = grpc.insecure_channel(
                    self.settings.upstream, options=self._channel_options
                )
                old.close()
            self._serving = serving
        return serving

    def upstream_unary(self, method: str) -> Any:
        with self._lock:
            if method not in self._unary:
                self._unary[method] = self._channel.unary_unary(method)
            return self._unary[method]

    def forward_unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        """The call on to Triton; a client that cancels (or whose deadline passes) cancels it
        there too, so Triton drops it from its queue as it would a direct client's."""
        future = self.upstream_unary(method).future(
            request, timeout=_timeout_s(context), metadata=_forwarded_metadata(context)
        )
        context.add_callback(future.cancel)
        try:
            return future.result()
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")
            raise  # not reached: abort raises
        except grpc.FutureCancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "cancelled by the client")
            raise  # not reached

    def unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        name = method[len(SERVICE) :] if method.startswith(SERVICE) else method
        serving = self._serving_now()
        if name == "ServerReady" and not serving:
            return service_pb2.ServerReadyResponse(ready=False).SerializeToString()
        if name == "ModelReady" and not serving:
            return service_pb2.ModelReadyResponse(ready=False).SerializeToString()
        if (method == HEALTH_CHECK or name == "ModelInfer") and not serving:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is restarting")
        try:
            if name == "ModelInfer":
                check_grpc_infer_request(
                    service_pb2.ModelInferRequest.FromString(request), self.settings.limits
                )
            elif name == "SystemSharedMemoryRegister":
                register = service_pb2.SystemSharedMemoryRegisterRequest.FromString(request)
                check_grpc_shared_memory_key(register.key)
        except RequestRefusedError as exc:
            _abort_refused(context, exc)
        except Exception as exc:  # a message that does not parse
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request: {exc}")
        return self.forward_unary(method, request, context)

    def stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """``ModelStreamInfer``: checked requests go on to Triton; a refused one gets an error
        response of its own; responses of both come back in the order they are ready."""
        responses: queue.Queue[bytes | None] = queue.Queue()
        done = object()

        def checked() -> Iterator[bytes]:
            for request in requests:
                try:
                    parsed = service_pb2.ModelInferRequest.FromString(request)
                except Exception as exc:
                    responses.put(_stream_error("", "", f"malformed stream request: {exc}"))
                    continue
                try:
                    if not self._serving_now():
                        raise RequestRefusedError(503, "the server is restarting")
                    check_grpc_infer_request(parsed, self.settings.limits)
                except RequestRefusedError as exc:
                    responses.put(_stream_error(parsed.model_name, parsed.id, exc.message))
                    continue
                yield request

        self._serving_now()
        with self._lock:
            channel = self._channel
        call = channel.stream_stream(STREAM_INFER)(
            checked(), timeout=_timeout_s(context), metadata=_forwarded_metadata(context)
        )
        context.add_callback(call.cancel)

        def pump() -> None:
            try:
                for response in call:
                    responses.put(response)
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.CANCELLED:
                    responses.put(_stream_error("", "", exc.details() or str(exc.code())))
            finally:
                responses.put(done)  # type: ignore[arg-type]

        threading.Thread(target=pump, name="grpc-guard-stream", daemon=True).start()
        while (item := responses.get()) is not done:
            yield item  # type: ignore[misc]


def _stream_error(model: str, request_id: str, message: str) -> bytes:
    """A ``ModelStreamInferResponse`` carrying an error for one request of a stream."""
    return service_pb2.ModelStreamInferResponse(
        error_message=message,
        infer_response=service_pb2.ModelInferResponse(model_name=model, id=request_id),
    ).SerializeToString()


class _Handler(grpc.GenericRpcHandler):
    """Every method as raw bytes: the stream method as a stream, the others unary."""

    def __init__(self, guard: GrpcGuard) -> None:
        self._guard = guard

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method == STREAM_INFER:
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: self._guard.stream(requests, context)
            )
        if method.startswith(SERVICE) or method == HEALTH_CHECK:
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: self._guard.unary(method, request, context)
            )
        return None  # UNIMPLEMENTED
