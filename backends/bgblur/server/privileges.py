"""The account ``tritonserver`` and its Python stubs run as.

Started by root, the launcher runs the server as an unprivileged account: a request that reaches
a file through the server (a shared-memory registration, a model path) then reaches only what
that account may read. ``"auto"`` picks the account ``bgblur`` if the host has one, else
``nobody``, and keeps root (with a warning naming why) when that account cannot run the server
from where it is installed, e.g. a Python under a home folder of mode 0700; a named account
that cannot is an error. Started by anyone else, the server runs as that user.

Client shared-memory regions are created by clients with mode 0600; a client running as root
gives a region it creates to the server's account (``bgblur_client.admin_key.server_uid``
says which one; the launcher records it next to the admin key), so that Triton can map it.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Accounts "auto" tries, in order.
AUTO_ACCOUNTS = ("bgblur", "nobody")
PROBE_TIMEOUT_S = 60.0

# Run as the account: can it import what a stub imports and reach every path the server needs?
_PROBE = """
import json, os, sys
import numpy, bgblur, bgblur.parameters
readable, executable = json.loads(sys.argv[1])
bad = [p for p in readable if not os.access(p, os.R_OK)]
bad += [p for p in executable if not os.access(p, os.X_OK)]
if bad:
    sys.exit("cannot reach: " + ", ".join(bad))
"""


@dataclass(frozen=True)
class ServerAccount:
    """An account to run the server as: its name and numeric user and group ids."""

    name: str
    uid: int
    gid: int


def resolve_server_account(user: str | None) -> ServerAccount | None:
    """The account for ``user`` (a name, ``"auto"``, or None/"" for this process's own).

    Returns None when the server runs as this process's user: no name, ``"auto"`` when not
    root or no account of ``AUTO_ACCOUNTS`` exists, or the name of this user or root.

    Raises:
        ValueError: an unknown name, or another user's name when this process is not root.
    """
    if not user:
        return None
    if user == "auto":
        if os.geteuid() != 0:
            return None
        for name in AUTO_ACCOUNTS:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return ServerAccount(name, entry.pw_uid, entry.pw_gid)
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"server user {user!r}: no such account on this host") from None
    if entry.pw_uid in (0, os.geteuid()):
        return None
    if os.geteuid() != 0:
        raise ValueError(f"server user {user!r}: only root can start the server as another user")
    return ServerAccount(user, entry.pw_uid, entry.pw_gid)


def account_cannot_serve(
    account: ServerAccount,
    *,
    readable: Iterable[Path],
    executable: Iterable[Path],
    environment: Mapping[str, str],
) -> str | None:
    """Why ``account`` cannot run the server (None when it can): this interpreter imports
    NumPy and bgblur as that account, and each of ``readable`` / ``executable`` is readable /
    executable by it."""
    paths = json.dumps([list(map(str, readable)), list(map(str, executable))])
    command = [sys.executable, "-c", _PROBE, paths]
    try:
        proc = subprocess.run(
            command,
            env=dict(environment),
            user=account.uid,
            group=account.gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit code {proc.returncode}"
    return None


def give_to_account(path: Path, account: ServerAccount) -> None:
    """Make ``path`` (a folder this process created for the server) the account's."""
    os.chown(path, account.uid, account.gid)
