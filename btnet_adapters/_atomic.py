"""Atomic writes of files and whole folders.

Files: a hidden temporary file next to the target, then ``os.replace``. Readers see either the
old file or the whole new one, never a half-written file; on an error the temporary file is
removed and the target is left untouched.

Folders (:func:`staging_folder`, :func:`mirror_folder`, :func:`swap_folder`): everything is
written into a staging folder next to the target, the files of the old folder that are kept
are hard-linked (or copied) in, and the two folders are swapped by two renames (target →
backup, staging → target) before the backup is deleted. A reader sees the old complete folder
or the new complete one, never a mix. Leftovers have recognisable names,
``.<name>.btnet-staging-<pid>-<tag>`` and ``.<name>.btnet-backup-<pid>-<tag>``; a save that is
killed leaves one behind, and the next folder save into the same parent
(:func:`recover_leftovers`) deletes those whose process is gone, except a backup whose target
is missing (killed between the two renames): that one is renamed back, so the old folder
returns. Concurrent saves into one folder are not coordinated: the last one wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def create_temp(target: str | os.PathLike[str]) -> tuple[int, Path]:
    """Open a new hidden temporary file next to ``target`` for writing.

    Returns ``(fd, path)``. The name ends with the target's suffix, so writers that look at
    the extension (matplotlib, OpenCV) pick the right format. Unlike ``tempfile.mkstemp`` the
    file gets the usual permissions (``0o666`` minus the umask), so the renamed result looks
    like any other written file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{target.suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return fd, tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` when the block succeeds."""
    fd, tmp = create_temp(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- whole folders
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.btnet-(?P<kind>staging|backup)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")
#: Without a cheap liveness test (not POSIX), leftovers older than this count as abandoned.
_ABANDONED_AFTER_S = 24 * 3600
_active: set[str] = set()  # names of this process's staging/backup folders in use
_active_lock = threading.Lock()


def _leftover_path(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.btnet-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _in_use(path: Path, pid: int) -> bool:
    """Whether the process that made ``path`` may still be using it."""
    if pid == os.getpid():
        with _active_lock:
            return path.name in _active
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        try:
            return time.time() - path.lstat().st_mtime < _ABANDONED_AFTER_S
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists under another user
        return True
    return True


def recover_leftovers(parent: str | os.PathLike[str]) -> list[Path]:
    """Clean up after folder saves into ``parent`` that were killed; returns what was restored.

    A leftover whose process still runs is left alone. A backup whose target is missing (the
    save was killed between its two renames) is renamed back to the target; every other
    leftover (staging folders, backups of a completed swap) is deleted.
    """
    parent = Path(parent)
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    restored = []
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir() or _in_use(entry, int(match["pid"])):
            continue
        target = parent / match["name"]
        if match["kind"] == "backup" and not os.path.lexists(target):
            try:
                os.rename(entry, target)
            except OSError as err:
                logger.warning("cannot restore %s from the backup %s left by a killed save: %s", target, entry, err)
                continue
            logger.warning("restored %s from the backup left by a save that was killed while swapping", target)
            restored.append(target)
        else:
            shutil.rmtree(entry, ignore_errors=True)
    return restored


def interrupted_backup(target: str | os.PathLike[str]) -> Path | None:
    """The backup a save into ``target`` left when it was killed between its two renames (the
    old folder, complete), or ``None``."""
    target = Path(target)
    try:
        entries = sorted(target.parent.iterdir())
    except OSError:
        return None
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match and match["kind"] == "backup" and match["name"] == target.name and entry.is_dir():
            return entry
    return None


@contextlib.contextmanager
def staging_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A new, empty staging folder next to ``target`` (leftovers of killed saves into the same
    parent are recovered first, see :func:`recover_leftovers`); it is deleted on leaving the
    block unless :func:`swap_folder` moved it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_leftovers(target.parent)
    staging = _leftover_path(target, "staging")
    with _active_lock:
        _active.add(staging.name)
    try:
        staging.mkdir()
        yield staging
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        with _active_lock:
            _active.discard(staging.name)


def _clone(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (a copy where links are refused); symlinks stay symlinks."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)  # files are only ever replaced, never rewritten in place: sharing is safe
    except OSError:
        if not stat.S_ISREG(src.lstat().st_mode):
            raise
        shutil.copy2(src, dst)


def mirror_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str], skip: Collection[str] = ()) -> None:
    """Give ``dst`` every entry of ``src`` it does not have yet, except the relative POSIX paths
    in ``skip``: files by hard link (or copy), symlinks as symlinks, empty folders as folders.
    Folders left empty only because their files were skipped are not recreated."""
    def fail(err: OSError) -> None:  # an unreadable folder must stop the save, not vanish from it
        raise err

    src, dst = Path(src), Path(dst)
    shutil.copymode(src, dst)
    for root, dirs, files in os.walk(src, onerror=fail):
        here = Path(root)
        rel_root = here.relative_to(src)
        leaves = files + [d for d in dirs if (here / d).is_symlink()]
        if not dirs and not files and rel_root.parts and not (dst / rel_root).exists():
            (dst / rel_root).mkdir(parents=True)
            shutil.copymode(here, dst / rel_root)
        for name in leaves:
            rel = rel_root / name
            if rel.as_posix() in skip or os.path.lexists(dst / rel):
                continue
            try:
                for part in reversed(rel.parents[:-1]):  # parents first, with their modes
                    if not (dst / part).exists():
                        (dst / part).mkdir()
                        shutil.copymode(src / part, dst / part)
            except (FileExistsError, NotADirectoryError):
                continue  # a new file takes the place of an old folder
            _clone(here / name, dst / rel)


def _cwd_within(folder: Path) -> str | None:
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    return cwd if cwd == str(folder) or cwd.startswith(str(folder) + os.sep) else None


def swap_folder(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the complete ``staging`` folder in the place of ``target`` (which may be missing).

    Two renames (target → backup, staging → target), then the backup is deleted; if the second
    rename fails the first is undone. A process whose working directory was inside ``target``
    is moved to the same path in the new folder (or to ``target``).
    """
    staging, target = Path(staging), Path(target)
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    cwd = _cwd_within(target)
    backup = _leftover_path(target, "backup")
    with _active_lock:
        _active.add(backup.name)
    try:
        os.rename(target, backup)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(backup, target)
            raise
        if cwd is not None:
            os.chdir(cwd if os.path.isdir(cwd) else target)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        with _active_lock:
            _active.discard(backup.name)
