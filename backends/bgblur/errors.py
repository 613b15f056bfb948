"""Exceptions raised by the library. The Triton adapters map them to Triton error codes."""


class BgblurError(Exception):
    """Base class of every error the library raises on purpose."""


class InvalidInputError(BgblurError, ValueError):
    """A caller's input (frame tensor or request parameter) is not acceptable.

    Served as Triton ``INVALID_ARG``; the message names the tensor or parameter, what was expected
    and what came.
    """


class ModelUnavailableError(BgblurError, RuntimeError):
    """A segmentation model or runtime cannot be built on this machine (missing weights/package)."""
