"""Exceptions raised by the bgblur client.

Every failure a user can cause or fix (bad path, server down, wrong model name, a
parameter the server refuses) is a :class:`ClientError`; the CLI prints its message on
one line. A :class:`UsageError` (the command line cannot be carried out as given, found
before any work) exits with status 2, any other :class:`ClientError` (the work failed)
with status 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ClientError(Exception):
    """A failure with a message meant for the user (no traceback needed)."""


class UsageError(ClientError):
    """The request cannot work as given: a bad or conflicting option, an input that is not a
    file, an output format that cannot hold the video, or an option that needs a package this
    machine lacks. Raised before anything is sent or written."""


class ServerUnreachableError(ClientError):
    """Triton could not be reached at the given URL over the given protocol."""


class ModelNotFoundError(ClientError):
    """The server is up but the requested model is not loaded and ready."""


class RequestRejectedError(ClientError):
    """The server answered an inference request with an error.

    Attributes:
        server_message: The server's own error text, e.g. naming a bad parameter.
        status: The protocol status, e.g. ``"StatusCode.INVALID_ARGUMENT"`` (gRPC) or
            ``"400"`` (HTTP); ``None`` when the server gave none.
    """

    def __init__(self, server_message: str, status: str | None = None) -> None:
        super().__init__(f"server rejected the request: {server_message}")
        self.server_message = server_message
        self.status = status
