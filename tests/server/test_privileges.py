"""The account the server runs as (``bgblur.server.privileges``): resolved from a name or
``auto``, checked by running as it, used for tritonserver and its stubs where it can run them;
a root client's shared-memory region handed to that account."""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bgblur.server.launcher import ServerStartError, TritonServer
from bgblur.server.privileges import (
    AUTO_ACCOUNTS,
    ServerAccount,
    account_cannot_serve,
    resolve_server_account,
)
from bgblur.server.supervisor import child_pids
from bgblur_client.admin_key import give_region_to_server, record_server_uid, server_uid

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to run as another account)")


def _nobody() -> ServerAccount:
    entry = pwd.getpwnam("nobody")
    return ServerAccount("nobody", entry.pw_uid, entry.pw_gid)


def _uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def _assert_serves(server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        frames = np.zeros((1, 24, 32, 3), np.uint8)
        request = grpcclient.InferInput("FRAMES", list(frames.shape), "UINT8")
        request.set_data_from_numpy(frames)
        result = client.infer("background_blur", [request], client_timeout=60)
        assert result.as_numpy("BLURRED").shape == frames.shape
    finally:
        client.close()


class TestResolve:
    def test_no_name_is_this_process_s_user(self) -> None:
        assert resolve_server_account(None) is None
        assert resolve_server_account("") is None

    def test_this_user_s_own_name_needs_no_switch(self) -> None:
        assert resolve_server_account(pwd.getpwuid(os.geteuid()).pw_name) is None

    def test_an_unknown_account_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="no such account"):
            resolve_server_account("no-such-account-here")

    @root_only
    def test_auto_as_root_picks_an_unprivileged_account(self) -> None:
        account = resolve_server_account("auto")
        expected = next(n for n in AUTO_ACCOUNTS if _has_account(n))
        assert account is not None and account.name == expected and account.uid != 0

    @pytest.mark.skipif(os.geteuid() == 0, reason="as root every account is allowed")
    def test_another_account_needs_root(self) -> None:
        with pytest.raises(ValueError, match="only root"):
            resolve_server_account("nobody")


def _has_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@root_only
def test_a_path_the_account_cannot_reach_is_named(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "weights").write_bytes(b"x")
    reason = account_cannot_serve(
        _nobody(), readable=[private / "weights"], executable=[], environment=os.environ
    )
    # Where nobody can run this Python, the path is named; where it cannot (a Python under a
    # home of mode 0700), that is the reason.
    assert reason is not None
    assert str(private / "weights") in reason or "Permission denied" in reason


@root_only
def test_the_server_runs_as_the_account_or_says_why_not(caplog) -> None:
    """``user="nobody"`` runs tritonserver and every stub as nobody where nobody can run this
    installation, and is refused with the reason where it cannot; ``auto`` then keeps root
    and warns."""
    reason = account_cannot_serve(
        _nobody(), readable=[Path(__file__).parent], executable=[], environment=os.environ
    )
    options = {"device": "cpu", "segmentation_model": "fixed_ellipse"}
    if reason is not None:
        with pytest.raises(ServerStartError, match="'nobody' cannot run the server"):
            TritonServer(user="nobody", **options).start()
        with (
            caplog.at_level(logging.WARNING, "bgblur.server.launcher"),
            TritonServer(user="auto", **options) as server,
        ):
            assert server.account is None and _uid_of(server.server_pid()) == 0
            _assert_serves(server)
        assert "tritonserver runs as root" in caplog.text and "cannot run the server" in caplog.text
        return
    with TritonServer(user="nobody", **options) as server:
        pid = server.server_pid()
        assert server.account is not None and _uid_of(pid) == server.account.uid
        stubs = child_pids(pid)
        assert stubs and all(_uid_of(stub) == server.account.uid for stub in stubs)
        _assert_serves(server)


@root_only
def test_a_root_client_s_region_goes_to_the_server_s_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tritonclient.utils.shared_memory as system_shm

    monkeypatch.setenv("BGBLUR_ADMIN_KEY_FILE", str(tmp_path / "admin.key"))
    name = f"bgblur_test_owner_{os.getpid()}"
    handle = system_shm.create_shared_memory_region(name, f"/{name}", 64)
    try:
        give_region_to_server(name)  # nothing recorded: stays root's
        assert os.stat(f"/dev/shm/{name}").st_uid == 0
        record_server_uid(_nobody().uid)
        assert server_uid() == _nobody().uid
        give_region_to_server(name)
        info = os.stat(f"/dev/shm/{name}")
        assert info.st_uid == _nobody().uid and info.st_mode & 0o077 == 0  # still private
    finally:
        system_shm.destroy_shared_memory_region(handle)
