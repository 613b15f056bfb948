"""An input file that arrives in chunks: bytes appended by one thread, read by others as it grows.

The server-side video model's chunked sessions (a sequence of requests, each carrying the next
bytes of the stream) feed a :class:`GrowingBytes`; the demuxers (PyAV, PyNvVideoCodec's memory
demuxer) read it through :meth:`GrowingBytes.reader`, file objects whose ``read`` waits for the
next chunk instead of reporting the end of the file. So decoding starts with the first chunk
and goes on as the rest arrives.

The readers are not seekable: FFmpeg then reads the stream front to back and never jumps to the
end to look for an index (an MP4 ``mfra`` box, MPEG-TS duration estimates), which would wait for
the last chunk. A chunked stream must therefore be streamable: fragmented or "faststart" MP4,
MPEG-TS, Matroska/WebM, raw H.264/HEVC. A plain MP4 with its index at the end is sent whole, in
one request.
"""

from __future__ import annotations

import threading
from typing import Any

from bgblur.errors import InvalidInputError


class GrowingBytes:
    """Bytes appended in chunks (:meth:`append`) until :meth:`finish` or :meth:`abort`.

    Args:
        max_bytes: the most the stream may hold; :meth:`append` beyond it raises
            :class:`~bgblur.errors.InvalidInputError` (and aborts the stream).
        limit_name: what sets ``max_bytes``, named in that error (a model setting).
    """

    def __init__(self, max_bytes: int, limit_name: str = "max_input_bytes") -> None:
        self.max_bytes = max_bytes
        self.limit_name = limit_name
        self._data = bytearray()
        self._finished = False
        self._abort_reason: str | None = None
        self._changed = threading.Condition()

    def __len__(self) -> int:
        with self._changed:
            return len(self._data)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def abort_reason(self) -> str | None:
        """Why the stream was aborted, or None."""
        return self._abort_reason

    def append(self, chunk: bytes | memoryview) -> None:
        """Add the next bytes; wakes the readers."""
        with self._changed:
            if self._finished:
                raise InvalidInputError("the video stream already ended: no more chunks")
            if self._abort_reason is not None:
                raise InvalidInputError(f"the video stream was stopped: {self._abort_reason}")
            if len(self._data) + len(chunk) > self.max_bytes:
                reason = f"the stream exceeds {self.max_bytes:,} bytes ({self.limit_name})"
                self._abort_locked(reason)
                raise InvalidInputError(f"VIDEO: {reason}")
            self._data += chunk
            self._changed.notify_all()

    def set_limit(self, max_bytes: int, limit_name: str) -> None:
        """Hold the stream to ``max_bytes`` from now on (e.g. lowered once the session knows what
        its frames take); raises InvalidInputError (and aborts) if it already holds more."""
        with self._changed:
            self.max_bytes, self.limit_name = max_bytes, limit_name
            if len(self._data) > max_bytes:
                reason = f"the stream exceeds {max_bytes:,} bytes ({limit_name})"
                self._abort_locked(reason)
                raise InvalidInputError(f"VIDEO: {reason}")

    def finish(self) -> None:
        """No more bytes: readers see the end of the file once they have read everything."""
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def abort(self, reason: str) -> None:
        """Stop the stream: every waiting and later read raises InvalidInputError(reason)."""
        with self._changed:
            self._abort_locked(reason)

    def _abort_locked(self, reason: str) -> None:
        if self._abort_reason is None:
            self._abort_reason = reason
        self._changed.notify_all()

    def reader(self) -> GrowingReader:
        """A new file object positioned at the first byte."""
        return GrowingReader(self)

    def read_at(self, position: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``position``: waits until at least one is there, or
        returns b"" at the end of a finished stream; raises if the stream is aborted."""
        with self._changed:
            while True:
                if self._abort_reason is not None:
                    raise InvalidInputError(f"the video stream was stopped: {self._abort_reason}")
                if position < len(self._data):
                    return bytes(self._data[position : position + max(size, 0)])
                if self._finished:
                    return b""
                self._changed.wait()


class GrowingReader:
    """A read-only, non-seekable file object over a :class:`GrowingBytes` (see the module)."""

    def __init__(self, source: GrowingBytes) -> None:
        self._source = source
        self._position = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:  # everything: wait for the end
            parts = []
            while chunk := self._source.read_at(self._position, 1 << 20):
                parts.append(chunk)
                self._position += len(chunk)
            return b"".join(parts)
        chunk = self._source.read_at(self._position, size)
        self._position += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> GrowingReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
