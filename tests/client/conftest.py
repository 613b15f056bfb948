"""Fixtures for the client tests that need no server."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def unused_url() -> str:
    """``localhost:PORT`` for a port nobody listens on (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"localhost:{port}"
