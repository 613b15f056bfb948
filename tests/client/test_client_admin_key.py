"""The admin key file: created once with owner-only permissions, read back by the client library,
sent in the header form of each protocol; no file, no header."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bgblur_client.admin_key import (
    ADMIN_HEADER,
    GRPC_ADMIN_HEADER,
    KEY_FILE_ENV,
    admin_headers,
    admin_headers_for,
    admin_key_path,
    load_or_create_admin_key,
    read_admin_key,
)


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cfg" / "admin.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    return path


def test_the_environment_names_the_key_file(key_file: Path) -> None:
    assert admin_key_path() == key_file


def test_the_default_key_file_is_in_the_users_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    assert admin_key_path() == Path.home() / ".config" / "bgblur" / "admin.key"


def test_the_key_is_created_once_readable_by_its_owner_only(key_file: Path) -> None:
    assert read_admin_key() is None
    key = load_or_create_admin_key()
    assert len(key) >= 40
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert load_or_create_admin_key() == key == read_admin_key()


def test_concurrent_creation_agrees_on_one_key(key_file: Path) -> None:
    keys: list[str] = []
    threads = [
        threading.Thread(target=lambda: keys.append(load_or_create_admin_key())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and keys[0] == read_admin_key()


def test_headers_take_each_protocols_form(key_file: Path) -> None:
    assert admin_headers("http") == {} == admin_headers("grpc")
    key = load_or_create_admin_key()
    assert admin_headers("http") == {ADMIN_HEADER: key}
    assert admin_headers("grpc") == {GRPC_ADMIN_HEADER: key}
    assert f"triton-grpc-protocol-{ADMIN_HEADER}" == GRPC_ADMIN_HEADER


def test_headers_for_a_tritonclient_follow_its_protocol(key_file: Path) -> None:
    key = load_or_create_admin_key()
    grpc = grpcclient.InferenceServerClient("localhost:1")
    http = httpclient.InferenceServerClient("localhost:1")
    try:
        assert admin_headers_for(grpc) == {GRPC_ADMIN_HEADER: key}
        assert admin_headers_for(http) == {ADMIN_HEADER: key}
    finally:
        grpc.close()
        http.close()
