"""The admin key: what unlocks a bgblur server's restricted APIs (shared-memory registration,
model repository, logging, trace) for clients on the same host.

The server side creates the key once per user, in a file only that user can read
(``$BGBLUR_ADMIN_KEY_FILE``, else ``~/.config/bgblur/admin.key``, mode 0600); the client
library reads the same file and sends the key in a header: HTTP ``bgblur-admin-key: <key>``,
gRPC metadata ``triton-grpc-protocol-bgblur-admin-key: <key>`` (the form Triton's
``--grpc-restricted-protocol`` expects). A client of another user, or on another host, has no
key and is refused.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

ADMIN_HEADER = "bgblur-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
KEY_FILE_ENV = "BGBLUR_ADMIN_KEY_FILE"
# Names of client shared-memory regions the server accepts (the HTTP guard enforces it).
SHARED_MEMORY_PREFIX = "bgblur_"


def admin_key_path() -> Path:
    """Where the key lives: ``$BGBLUR_ADMIN_KEY_FILE`` or ``~/.config/bgblur/admin.key``."""
    configured = os.environ.get(KEY_FILE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".config" / "bgblur" / "admin.key"


def read_admin_key(path: Path | None = None) -> str | None:
    """The key, or None when the file does not exist or cannot be read by this user."""
    try:
        key = (path or admin_key_path()).read_text().strip()
    except OSError:
        return None
    return key or None


def load_or_create_admin_key(path: Path | None = None) -> str:
    """The key of ``path`` (default ``admin_key_path()``), created first when missing: 32 random
    bytes, URL-safe, in a file of mode 0600 in a folder of mode 0700."""
    path = path or admin_key_path()
    existing = read_admin_key(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_urlsafe(32)
    # Written whole to a private temporary file, then linked into place: a reader never sees
    # a partial key, and of two processes creating it at once the first link wins.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".admin-key-")
    try:
        with os.fdopen(descriptor, "w") as file:  # mkstemp: mode 0600
            file.write(key + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            existing = read_admin_key(path)
            if existing is None:
                raise
            return existing
    finally:
        os.unlink(temporary)
    return key


def server_uid_path() -> Path:
    """Where a launcher started by this user records the account its server runs as."""
    return admin_key_path().with_name("server.uid")


def record_server_uid(uid: int) -> None:
    """Record ``uid``, the account this user's servers run as (``server_uid`` reads it)."""
    path = server_uid_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".server-uid-")
    with os.fdopen(descriptor, "w") as file:
        file.write(f"{uid}\n")
    os.replace(temporary, path)


def server_uid() -> int | None:
    """The account this user's servers run as, when a launcher recorded one, else None."""
    try:
        return int(server_uid_path().read_text().strip())
    except (OSError, ValueError):
        return None


def give_region_to_server(name: str) -> None:
    """Give the ``/dev/shm`` region ``name`` (mode 0600), created by this process, to the
    account the server runs as, so that Triton can map it: only when this process is root and
    its servers run as another account (``server_uid``); otherwise nothing to do."""
    uid = server_uid() if os.geteuid() == 0 else None
    if uid not in (None, 0):
        os.chown(Path("/dev/shm") / name.lstrip("/"), uid, -1)


def admin_headers(protocol: str, key: str | None = None) -> dict[str, str]:
    """Headers that carry the key for ``protocol`` ("grpc" or "http"); empty without a key."""
    key = key if key is not None else read_admin_key()
    if key is None:
        return {}
    return {GRPC_ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER: key}


def admin_headers_for(client: Any, key: str | None = None) -> dict[str, str]:
    """``admin_headers`` for a tritonclient gRPC or HTTP ``InferenceServerClient``."""
    protocol = "grpc" if type(client).__module__.startswith("tritonclient.grpc") else "http"
    return admin_headers(protocol, key)
