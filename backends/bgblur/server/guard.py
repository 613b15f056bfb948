"""The HTTP guard: a reverse proxy in front of Triton's HTTP port that refuses what would crash,
hang or starve Triton, and answers the restricted APIs itself.

Built on aiohttp (an established asyncio HTTP server and client): the guard reads a request
with a size limit and a deadline, checks it (``bgblur.server.request_checks``), and only then
forwards it to Triton's HTTP port, which listens on loopback where the guard reaches it. What it
does, in order, for each request:

1. ``Content-Encoding`` other than identity: 415 (a 1.5 MB gzip body can inflate to 1.5 GB).
2. A declared ``Content-Length`` above the limit: 413 before a byte of the body is read; a body
   that grows past it (chunked): 413; a body not complete within ``body_timeout_s``: 408.
3. Restricted APIs (model repository, shared memory, logging, trace): 403 unless the request
   carries the admin key (``bgblur_client.admin_key``); shared-memory registration also 403
   for a system region outside the project's name prefix, or when shared memory is off.
4. Inference bodies: the JSON checks (nesting, finite numbers, shapes against data and the
   frame limits, parameter count and sizes, ``sequence_id`` type): 400 naming the field.
   Any other JSON body: nesting and numbers.
5. ``/v2/health/ready`` and model readiness: 503 while ``ready()`` (the supervisor's view: a
   real inference answered in time) is false.
6. Forwarded to Triton with a whitelist of headers; Triton down: 503; no answer within
   ``upstream_timeout_s`` (``HEALTH_TIMEOUT_S`` for health checks): 504.

Every refusal is a Triton-style JSON body ``{"error": "..."}``, so tritonclient raises an
``InferenceServerException`` with the message and the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from bgblur.server.request_checks import (
    RequestLimits,
    RequestRefusedError,
    check_header_length,
    check_inference_body,
    check_inference_header,
    check_shared_memory_registration,
    parse_json,
)
from bgblur_client.admin_key import ADMIN_HEADER

LOG = logging.getLogger("bgblur.guard")

_INFER_PATH = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer$")
_MODEL_READY_PATH = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/ready$")
_SHM_REGISTER_PATH = re.compile(r"^/v2/(system|cuda)sharedmemory/region/[^/]+/register$")
_RESTRICTED = (
    (re.compile(r"^/v2/repository(?:/|$)"), "model-repository"),
    (re.compile(r"^/v2/(?:system|cuda)sharedmemory(?:/|$)"), "shared-memory"),
    (re.compile(r"^/v2/logging(?:/|$)"), "logging"),
    (re.compile(r"^/v2/(?:models/[^/]+(?:/versions/[^/]+)?/)?trace(?:/|$)"), "trace"),
)
# Request headers Triton needs; everything else (Accept-Encoding, cookies...) stays here.
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "traceparent")
_FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Inference-Header-Content-Length")
HEALTH_TIMEOUT_S = 3.0
_STREAM_BYTES = 1 << 20


def restricted_category(path: str) -> str | None:
    """The restricted API group of a request path (Triton's names), None when open."""
    normal = re.sub(r"/{2,}", "/", path)
    for pattern, category in _RESTRICTED:
        if pattern.match(normal):
            return category
    return None


@dataclass
class GuardSettings:
    """How the guard listens, where it forwards and what it lets through.

    Attributes:
        host, port: where clients connect.
        upstream_port: Triton's HTTP port on 127.0.0.1.
        admin_key: the key that unlocks the restricted APIs (sent on to Triton as is).
        shared_memory: whether client shared-memory registration is offered at all.
        limits: request limits (``RequestLimits``).
        body_timeout_s: a body must arrive completely within this.
        header_timeout_s: a connection must deliver a request's headers within this of opening
            (after a response: within ``keepalive_timeout_s`` plus this), else it is closed
            (a client that sends its headers a byte at a time holds no connection for long).
        keepalive_timeout_s: an idle keep-alive connection is closed after this.
        upstream_timeout_s: Triton must answer within this (large CPU batches take seconds).
        ready: the service's readiness beyond Triton's own (the supervisor's probe).
    """

    host: str
    port: int
    upstream_port: int
    admin_key: str
    shared_memory: bool = True
    limits: RequestLimits = field(default_factory=RequestLimits)
    body_timeout_s: float = 30.0
    header_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    upstream_timeout_s: float = 300.0
    ready: Callable[[], bool] = lambda: True


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps({"error": message}), content_type="application/json"
    )


class _StreamedBody:
    """The binary part of a checked inference request, read on demand within the deadline.

    ``failure`` is (status, message) when the client's body stopped short or came too late.
    """

    def __init__(
        self, request: web.Request, header: bytes, remaining: int, deadline: float
    ) -> None:
        self.request, self.header, self.remaining, self.deadline = (
            request,
            header,
            remaining,
            deadline,
        )
        self.failure: tuple[int, str] | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.header
        loop = asyncio.get_running_loop()
        left = self.remaining
        while left:
            try:
                chunk = await asyncio.wait_for(
                    self.request.content.read(min(left, _STREAM_BYTES)),
                    max(0.0, self.deadline - loop.time()),
                )
            except asyncio.TimeoutError:
                self.failure = (408, "the request body did not arrive within the time limit")
                raise
            if not chunk:
                self.failure = (400, f"the request body ended {left} bytes short")
                raise ConnectionResetError(self.failure[1])
            left -= len(chunk)
            yield chunk


class HttpGuard:
    """The guard as a server on its own event loop thread (``start()``/``stop()``)."""

    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._session: ClientSession | None = None
        self._runner: web.AppRunner | None = None
        # Per connection (aiohttp's RequestHandler; entries of closed ones are dropped by the
        # watchdog): a request in progress, since when it has been waiting for the next
        # request's headers (loop time), whether it was served before.
        self._busy: dict[Any, bool] = {}
        self._waiting_since: dict[Any, float] = {}
        self._served: set[Any] = set()
        self.closed_for_slow_headers = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> HttpGuard:
        self._thread = threading.Thread(target=self._run, name="bgblur-http-guard", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s) or self._failure is not None:
            raise RuntimeError(f"HTTP guard did not start: {self._failure!r}")
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop listening, let requests in flight finish (up to ``timeout_s``), close the
        connections to Triton (its own shutdown waits for open HTTP connections)."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout_s + 5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._thread = None

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=self.settings.limits.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=15.0,
            keepalive_timeout=self.settings.keepalive_timeout_s,
        )
        self._runner = runner
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(
                runner, self.settings.host, self.settings.port, reuse_address=True, backlog=512
            )
            loop.run_until_complete(site.start())
            self._session = loop.run_until_complete(self._open_session())
            watchdog = loop.create_task(self._close_slow_connections(runner))
        except BaseException as exc:  # port taken, bad address
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
            watchdog.cancel()
        finally:
            # Handlers of idle keep-alive connections: cancelled, not left pending.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _close_slow_connections(self, runner: web.AppRunner) -> None:
        """Every second: close connections that have waited too long for a request's headers
        (``header_timeout_s`` from opening; ``keepalive_timeout_s`` more after a response).
        A connection with a request in progress is the body deadline's business."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        while True:
            await asyncio.sleep(min(1.0, settings.header_timeout_s / 4))
            server = runner.server
            if server is None:
                continue
            now = loop.time()
            connections = list(server.connections)
            for gone in set(self._waiting_since) - set(connections):
                self._waiting_since.pop(gone, None)
                self._busy.pop(gone, None)
                self._served.discard(gone)
            for handler in connections:
                if self._busy.get(handler):
                    continue
                since = self._waiting_since.setdefault(handler, now)
                budget = settings.header_timeout_s + (
                    settings.keepalive_timeout_s if handler in self._served else 0.0
                )
                if now - since > budget and handler.transport is not None:
                    self.closed_for_slow_headers += 1
                    handler.force_close()
                    handler.transport.close()

    async def _open_session(self) -> ClientSession:
        return ClientSession(
            connector=TCPConnector(limit=256, force_close=False),
            timeout=ClientTimeout(total=self.settings.upstream_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )

    # -- requests --------------------------------------------------------------------------

    def _key_ok(self, request: web.Request) -> bool:
        given = request.headers.get(ADMIN_HEADER, "")
        return hmac.compare_digest(given.encode(), self.settings.admin_key.encode())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        connection = request.protocol
        self._busy[connection] = True
        try:
            try:
                body = await self._admit(request)
            except RequestRefusedError as exc:
                return _error(exc.status, exc.message)
            return await self._forward(request, body)
        finally:
            self._busy[connection] = False
            self._served.add(connection)
            self._waiting_since[connection] = asyncio.get_running_loop().time()

    async def _admit(self, request: web.Request) -> bytes:
        """Read and check one request; raises ``RequestRefusedError`` for what must not pass."""
        settings, limits = self.settings, self.settings.limits
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise RequestRefusedError(
                415, f"Content-Encoding {encoding[:32]!r} is not accepted; send the body as is"
            )
        if request.content_length is not None and request.content_length > limits.max_body_bytes:
            raise RequestRefusedError(
                413,
                f"a body of {request.content_length} bytes exceeds the per-request maximum of "
                f"{limits.max_body_bytes} bytes",
            )
        path = request.path
        raw_path = request.raw_path.split("?", 1)[0]
        category = restricted_category(path) or restricted_category(raw_path)
        if category is not None:
            if not self._key_ok(request):
                raise RequestRefusedError(
                    403,
                    f"This API is restricted ({category}): it needs the admin key in the "
                    f"'{ADMIN_HEADER}' header",
                )
            if category == "shared-memory" and not settings.shared_memory:
                raise RequestRefusedError(
                    403, "shared memory is restricted: it is off on this server"
                )
        header_length = request.headers.get("Inference-Header-Content-Length")
        is_infer = bool(_INFER_PATH.match(path)) and request.method == "POST"
        if is_infer and header_length is not None and (request.content_length or 0) > _STREAM_BYTES:
            return await self._admit_streamed(request, header_length)
        try:
            body = await asyncio.wait_for(request.read(), settings.body_timeout_s)
        except asyncio.TimeoutError:
            raise RequestRefusedError(
                408, f"the request body did not arrive within {settings.body_timeout_s:g} s"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise RequestRefusedError(
                413, f"the body exceeds the per-request maximum of {limits.max_body_bytes} bytes"
            ) from None
        if is_infer:
            check_inference_body(body, header_length, limits)
        elif match := _SHM_REGISTER_PATH.match(path):
            check_shared_memory_registration(body, match[1], limits)
        elif body:
            if len(body) > limits.max_json_body_bytes:
                raise RequestRefusedError(413, f"a body of {len(body)} bytes on {path[:64]!r}")
            parse_json(body, limits)
        if (path == "/v2/health/ready" or _MODEL_READY_PATH.match(path)) and not settings.ready():
            raise RequestRefusedError(503, "the server is not ready (starting or recovering)")
        return body

    async def _admit_streamed(self, request: web.Request, header_length: str) -> _StreamedBody:
        """A large binary inference request: its JSON header read and checked first, the binary
        part left to flow on to Triton as it arrives (``_StreamedBody``)."""
        settings, limits = self.settings, self.settings.limits
        total = int(request.content_length or 0)
        length = check_header_length(header_length, total, limits)
        deadline = asyncio.get_running_loop().time() + settings.body_timeout_s
        try:
            header = await asyncio.wait_for(
                request.content.readexactly(length), settings.body_timeout_s
            )
        except asyncio.TimeoutError:
            raise RequestRefusedError(
                408, f"the request body did not arrive within {settings.body_timeout_s:g} s"
            ) from None
        except asyncio.IncompleteReadError:
            raise RequestRefusedError(400, "the request body ended inside its header") from None
        check_inference_header(
            parse_json(header, limits, "inference header"), total - length, limits
        )
        return _StreamedBody(request, header, total - length, deadline)

    async def _forward(
        self, request: web.Request, body: bytes | _StreamedBody
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = {
            name: request.headers[name]
            for name in _FORWARDED_REQUEST_HEADERS
            if name in request.headers
        }
        if restricted_category(request.path) is not None:
            headers[ADMIN_HEADER] = self.settings.admin_key
        if isinstance(body, _StreamedBody):
            headers["Content-Length"] = str(request.content_length)
        url = f"http://127.0.0.1:{self.settings.upstream_port}{request.raw_path}"
        # Health checks answer fast or not at all: a hung Triton must not hold a probe.
        health = request.path.startswith("/v2/health/") or bool(
            _MODEL_READY_PATH.match(request.path)
        )
        timeout_s = HEALTH_TIMEOUT_S if health else self.settings.upstream_timeout_s
        try:
            async with self._session.request(
                request.method,
                url,
                data=body.chunks() if isinstance(body, _StreamedBody) else (body or None),
                headers=headers,
                allow_redirects=False,
                timeout=ClientTimeout(total=timeout_s),
            ) as upstream:
                response_headers = {
                    name: upstream.headers[name]
                    for name in (*_FORWARDED_RESPONSE_HEADERS, "Content-Length")
                    if name in upstream.headers
                }
                if upstream.content_length is None or upstream.content_length <= _STREAM_BYTES:
                    payload = await upstream.read()
                    response_headers.pop("Content-Length", None)
                    return web.Response(
                        status=upstream.status, body=payload, headers=response_headers
                    )
                # A large answer (frames) goes on as it arrives: its last byte leaves Triton
                # and reaches the client at nearly the same time.
                response = web.StreamResponse(status=upstream.status, headers=response_headers)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(_STREAM_BYTES):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except Exception as exc:
            if isinstance(body, _StreamedBody) and body.failure is not None:
                return _error(*body.failure)
            if isinstance(exc, asyncio.TimeoutError):
                return _error(504, f"the server did not answer within {timeout_s:g} s")
            if not isinstance(exc, ClientError | ConnectionError | OSError):
                raise

            LOG.debug("upstream unavailable: %r", exc)
            return _error(503, "the server is unavailable (starting or recovering); retry")
