"""Output files that appear whole or not at all.

Every output (blurred image or video, mask, preview) is written to a hidden partial file in
the output's folder and renamed over the output only when it is complete, so a failed run
leaves an existing output as it was and never leaves a half-written file under the output's
name. The partial file keeps the output's extension (FFmpeg and OpenCV pick the format from
it), and the rename stays within one file system, so it is atomic.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from bgblur_client.errors import ClientError, UsageError


def partial_path(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` with the same extension, e.g.
    ``out/.clip.3f9a1c2b.partial.mp4`` for ``out/clip.mp4``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")


def commit(partial: Path, path: Path) -> None:
    """Rename the finished ``partial`` over ``path`` (replacing what was there).

    Raises:
        ClientError: The rename failed (the partial file is removed).
    """
    try:
        os.replace(partial, path)
    except OSError as exc:
        discard(partial)
        raise ClientError(f"cannot write '{path}': {exc.strerror or exc}") from exc


def discard(partial: Path) -> None:
    """Remove a partial file (nothing happens when it does not exist)."""
    with contextlib.suppress(OSError):
        partial.unlink(missing_ok=True)


def write_bytes_whole(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a partial file and a rename.

    Raises:
        ClientError: The folder is missing or not writable.
    """
    path = Path(path)
    partial = partial_path(path)
    try:
        partial.write_bytes(data)
    except OSError as exc:
        discard(partial)
        raise ClientError(f"cannot write '{path}': {exc.strerror or exc}") from exc
    commit(partial, path)


def check_output_path(path: str | Path, kind: str) -> None:
    """Refuse an output path that can never be written: a directory, or in a missing folder.

    Args:
        path: The output file.
        kind: What it is, for the message (``"image"``, ``"video"``).

    Raises:
        UsageError: ``path`` is a directory or its folder does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write {kind} '{path}': it is a directory; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {kind} '{path}': directory '{path.parent}' does not exist")
