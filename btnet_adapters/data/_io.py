"""Atomic file writes: a temporary file next to the target, then ``os.replace``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def create_temp(target: str | os.PathLike[str]) -> tuple[int, Path]:
    """Open a new hidden temporary file next to ``target`` for writing.

    Returns ``(fd, path)``. Unlike ``tempfile.mkstemp`` the file gets the usual permissions
    (``0o666`` minus the umask), so the renamed result looks like any other written file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return fd, tmp


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one."""
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8 ``text`` to ``path``, atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))
