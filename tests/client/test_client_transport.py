"""Connecting: clear errors when nothing listens or the URL is malformed."""

from __future__ import annotations

import pytest

from bgblur_client.errors import ClientError, ServerUnreachableError
from bgblur_client.transport import BlurClient, default_url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_names_url_protocol_and_the_fix(unused_url: str, protocol: str) -> None:
    with pytest.raises(ServerUnreachableError) as caught:
        BlurClient(unused_url, protocol=protocol, timeout_s=5)

    message = str(caught.value)
    assert message.startswith(f"cannot reach Triton at {unused_url} over {protocol}: ")
    assert message.endswith("is the server running? (make serve)")


@pytest.mark.parametrize(
    "url", ["http://localhost:8000", "localhost:8001/v2", "localhost", "localhost:abc", ":8001", ""]
)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_url_that_is_not_host_port_is_refused(url: str, protocol: str) -> None:
    with pytest.raises(ClientError, match="the server URL must be host:port"):
        BlurClient(url, protocol=protocol)


def test_default_urls_are_tritons_default_ports() -> None:
    assert default_url("grpc") == "localhost:8001"
    assert default_url("http") == "localhost:8000"
