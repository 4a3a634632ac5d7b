"""Shared helpers of the protocol readers: text lines, fields, paths, image checks."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import ProtocolFileError


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty, non-comment lines of a UTF-8 text file as ``(line number, text)``."""
    if not path.is_file():
        raise ProtocolFileError(f"protocol file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolFileError(f"{path}: not a UTF-8 text file ({exc})") from None
    return [(n, line.rstrip("\r\n")) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def split_fields(line: str) -> list[str]:
    """Tab-separated fields, or whitespace-separated when the line has no tab."""
    return line.split("\t") if "\t" in line else line.split()


def parse_int(text: str, path: Path, lineno: int, what: str) -> int:
    """``int(text)`` or a :class:`ProtocolFileError` naming the file, line and field."""
    try:
        return int(text)
    except ValueError:
        raise ProtocolFileError(f"{path}:{lineno}: {what} must be an integer, "
                                f"got {text!r}") from None


def resolve(root: Path | None, rel: str) -> Path:
    """``root / rel`` unless ``rel`` is absolute or there is no root."""
    p = Path(rel)
    return p if root is None or p.is_absolute() else root / p


def require_images(paths: Iterable[Path], what: str = "images", shown: int = 5) -> None:
    """Raise :class:`ProtocolFileError` listing the first ``shown`` missing files, if any."""
    missing = [p for p in dict.fromkeys(paths) if not Path(p).is_file()]
    if missing:
        listed = "\n  ".join(str(p) for p in missing[:shown])
        more = f"\n  ... and {len(missing) - shown} more" if len(missing) > shown else ""
        raise ProtocolFileError(f"{len(missing)} of the {what} do not exist:\n  {listed}{more}")
