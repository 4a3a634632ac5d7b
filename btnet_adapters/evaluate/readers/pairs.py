"""Verification pair lists: LFW ``pairs.txt`` and TSV pair files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ProtocolFileError
from ._common import parse_int, read_lines, require_images, resolve, split_fields


@dataclass(frozen=True)
class PairList:
    """Image pairs of a 1:1 verification protocol.

    Attributes:
        paths1: first image of each pair (absolute when a root was given).
        paths2: second image of each pair — the one the reference down-samples.
        issame: True for same-identity pairs.
        folds: fold id per pair (``None``: use contiguous folds).
        name: a short name for tables.
    """

    paths1: tuple[Path, ...]
    paths2: tuple[Path, ...]
    issame: np.ndarray
    folds: np.ndarray | None
    name: str = "pairs"

    def __len__(self) -> int:
        return len(self.paths1)

    def unique_paths(self) -> list[Path]:
        """Every image once, in first-appearance order (embed these, then index)."""
        return list(dict.fromkeys(self.paths1 + self.paths2))


def read_pairs_tsv(path: str | os.PathLike[str],
                   images_root: str | os.PathLike[str] | None = None, *,
                   check_images: bool = True) -> PairList:
    """Read a TSV pair list ``path1 path2 same [fold]`` (header line optional).

    Fields are tab-separated (whitespace when the line has no tab). ``same`` is 1/0 (or
    true/false); ``fold`` is an integer fold id, or absent for contiguous folds.

    Args:
        path: the pair list.
        images_root: folder the relative image paths are relative to.
        check_images: raise if any named image does not exist (listing the first few).
    """
    path = Path(path)
    root = Path(images_root) if images_root is not None else None
    rows = read_lines(path)
    if len(rows) > 1 and _has_flag(rows[1][1]) and not _has_flag(rows[0][1]):
        rows = rows[1:]  # header such as "path1 path2 same fold"
    if not rows:
        raise ProtocolFileError(f"{path}: no pairs")
    p1, p2, same, folds = [], [], [], []
    width = None
    for lineno, line in rows:
        f = split_fields(line)
        if len(f) not in (3, 4) or (width is not None and len(f) != width):
            raise ProtocolFileError(f"{path}:{lineno}: expected 'path1 path2 same [fold]' "
                                    f"consistently, got {len(f)} fields")
        width = len(f)
        if not _is_flag(f[2]):
            raise ProtocolFileError(f"{path}:{lineno}: 'same' must be 1/0 or true/false, "
                                    f"got {f[2]!r}")
        p1.append(resolve(root, f[0]))
        p2.append(resolve(root, f[1]))
        same.append(f[2].lower() in ("1", "true"))
        if len(f) == 4:
            folds.append(parse_int(f[3], path, lineno, "fold"))
    pairs = PairList(tuple(p1), tuple(p2), np.asarray(same, bool),
                     np.asarray(folds, np.int64) if folds else None, name=path.stem)
    if check_images:
        require_images(pairs.paths1 + pairs.paths2, f"images named in {path}")
    return pairs


def _is_flag(text: str) -> bool:
    return text.lower() in ("0", "1", "true", "false")


def _has_flag(line: str) -> bool:
    fields = split_fields(line)
    return len(fields) >= 3 and _is_flag(fields[2])


def read_lfw_pairs(path: str | os.PathLike[str], images_root: str | os.PathLike[str], *,
                   ext: str = "jpg", check_images: bool = True) -> PairList:
    """Read LFW's ``pairs.txt`` (View 2: header ``folds n``; View 1: header ``n``).

    Matched pairs are ``name i j``, mismatched ``name1 i name2 j``; images live at
    ``images_root/name/name_{i:04d}.{ext}``. Each fold holds ``n`` matched then ``n``
    mismatched pairs; the fold id of every pair is recorded.
    """
    path = Path(path)
    root = Path(images_root)
    rows = read_lines(path)
    if not rows:
        raise ProtocolFileError(f"{path}: empty file")
    head = split_fields(rows[0][1])
    if len(head) not in (1, 2):
        raise ProtocolFileError(f"{path}:1: expected a header 'folds pairs_per_class' or "
                                f"'pairs_per_class', got {rows[0][1]!r}")
    n_folds = parse_int(head[0], path, 1, "fold count") if len(head) == 2 else 1
    per_class = parse_int(head[-1], path, 1, "pairs per class")
    body = rows[1:]
    if len(body) != n_folds * 2 * per_class:
        raise ProtocolFileError(f"{path}: header announces {n_folds} folds × 2 × {per_class} "
                                f"pairs but the file has {len(body)}")

    def image(name: str, num: str, lineno: int) -> Path:
        return root / name / f"{name}_{parse_int(num, path, lineno, 'image number'):04d}.{ext}"

    p1, p2, same = [], [], []
    for lineno, line in body:
        f = split_fields(line)
        if len(f) == 3:
            p1.append(image(f[0], f[1], lineno))
            p2.append(image(f[0], f[2], lineno))
            same.append(True)
        elif len(f) == 4:
            p1.append(image(f[0], f[1], lineno))
            p2.append(image(f[2], f[3], lineno))
            same.append(False)
        else:
            raise ProtocolFileError(f"{path}:{lineno}: expected 'name i j' or "
                                    f"'name1 i name2 j', got {line!r}")
    folds = np.repeat(np.arange(n_folds), 2 * per_class)
    pairs = PairList(tuple(p1), tuple(p2), np.asarray(same, bool), folds, name=path.stem)
    if check_images:
        require_images(pairs.paths1 + pairs.paths2, f"images named in {path}")
    return pairs


#: Pair-list formats :func:`read_pair_list` reads.
PAIR_FORMATS = ("auto", "tsv", "lfw")


def read_pair_list(path: str | os.PathLike[str], images_root: str | os.PathLike[str] | None = None, *,
                   fmt: str = "auto", check_images: bool = True) -> PairList:
    """Read a pair list in either text format, told apart by content when ``fmt="auto"``.

    LFW's ``pairs.txt`` starts with a line of one or two integers (``folds pairs_per_class``);
    anything else is read as a TSV ``path1 path2 same [fold]`` list. Paths are relative to
    ``images_root`` (default: the list's folder).
    """
    if fmt not in PAIR_FORMATS:
        raise ProtocolFileError(f"unknown pair-list format {fmt!r}; accepted: {', '.join(PAIR_FORMATS)}")
    path = Path(path)
    root = Path(images_root) if images_root is not None else path.parent
    if fmt == "auto":
        rows = read_lines(path)
        first = split_fields(rows[0][1]) if rows else []
        fmt = "lfw" if len(first) in (1, 2) and all(f.isdigit() for f in first) else "tsv"
    if fmt == "lfw":
        return read_lfw_pairs(path, root, check_images=check_images)
    return read_pairs_tsv(path, root, check_images=check_images)

