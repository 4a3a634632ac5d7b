"""IJB-B / IJB-C metadata as distributed with insightface's IJB evaluation (``IJBC/meta``).

Files (``t`` = ``ijbc`` or ``ijbb``):

* ``t_face_tid_mid.txt`` — ``image_name template_id media_id`` per image, no header;
* ``t_template_pair_label.txt`` — ``template_id1 template_id2 label`` per 1:1 pair;
* ``t_name_5pts_score.txt`` — ``image_name x1 y1 … x5 y5 detector_score`` per image, in the
  same order as ``t_face_tid_mid.txt``; images live in ``loose_crop/``;
* ``t_1N_gallery_G1.csv`` / ``_G2.csv`` (IJB-B: ``_S1`` / ``_S2``) and ``t_1N_probe_mixed.csv``
  — comma-separated with a header, one row per image; ``TEMPLATE_ID`` and ``SUBJECT_ID`` are
  the first two columns.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ProtocolFileError
from ._common import read_lines, split_fields


@dataclass(frozen=True)
class IJBMeta:
    """Everything the IJB 1:1 and 1:N protocols need except the images.

    Attributes:
        image_names: file name per image (under ``image_dir``).
        templates: template id per image.
        medias: media id per image.
        landmarks: ``N × 5 × 2`` float32 five-point landmarks in the loose crop.
        face_scores: detector score per image (float32).
        pairs: ``(t1, t2, label)`` 1:1 template pairs (``None`` when the file is absent).
        galleries: 1:N gallery name (``"G1"``, ``"G2"``, ``"S1"``, …) → ``(templates,
            subjects)`` per row.
        probes: 1:N probe ``(templates, subjects)`` per row (``None`` when absent).
        image_dir: folder of the loose crops.
        target: ``"IJBC"`` or ``"IJBB"``.
    """

    image_names: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    face_scores: np.ndarray
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    galleries: dict[str, tuple[np.ndarray, np.ndarray]]
    probes: tuple[np.ndarray, np.ndarray] | None
    image_dir: Path
    target: str


def read_template_media(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``*_face_tid_mid.txt``: ``(image_names, template_ids, media_ids)``."""
    path = Path(path)
    names, tids, mids = [], [], []
    for lineno, line in read_lines(path):
        f = split_fields(line)
        if len(f) != 3:
            raise ProtocolFileError(f"{path}:{lineno}: expected 'image_name template_id media_id'")
        names.append(f[0])
        tids.append(f[1])
        mids.append(f[2])
    if not names:
        raise ProtocolFileError(f"{path}: no images")
    return np.asarray(names), _ints(tids, path, "template id"), _ints(mids, path, "media id")


def _ints(values: list[str], path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64)
    except ValueError:
        bad = next(v for v in values if not v.lstrip("-").isdigit())
        raise ProtocolFileError(f"{path}: {what} must be integers, found {bad!r}") from None


def read_template_pairs(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``*_template_pair_label.txt``: ``(template1, template2, label)`` int arrays."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolFileError(f"protocol file not found: {path}")
    try:
        table = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise ProtocolFileError(f"{path}: expected 'template1 template2 label' integer rows "
                                f"({exc})") from None
    if table.shape[0] == 0 or table.shape[1] != 3:
        raise ProtocolFileError(f"{path}: expected 3 integer columns, got shape {table.shape}")
    if not np.isin(table[:, 2], (0, 1)).all():
        raise ProtocolFileError(f"{path}: labels must be 0 or 1")
    return table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()


def read_landmarks(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``*_name_5pts_score.txt``: ``(image_names, landmarks N×5×2, detector scores)``."""
    path = Path(path)
    names, values = [], []
    for lineno, line in read_lines(path):
        f = line.split()
        if len(f) != 12:
            raise ProtocolFileError(f"{path}:{lineno}: expected 'name x1 y1 … x5 y5 score' "
                                    f"(12 fields), got {len(f)}")
        names.append(f[0])
        values.append(f[1:])
    if not names:
        raise ProtocolFileError(f"{path}: no images")
    try:
        arr = np.asarray(values, dtype=np.float32)
    except ValueError as exc:
        raise ProtocolFileError(f"{path}: landmarks and scores must be numbers ({exc})") from None
    return np.asarray(names), arr[:, :10].reshape(-1, 5, 2), arr[:, 10].copy()


def read_1n_csv(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a 1:N gallery/probe CSV: ``(template ids, subject ids)``, one entry per row."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolFileError(f"protocol file not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if len(rows) < 2:
        raise ProtocolFileError(f"{path}: expected a header and at least one row")
    header = [h.strip().upper() for h in rows[0]]
    t_col = header.index("TEMPLATE_ID") if "TEMPLATE_ID" in header else 0
    s_col = header.index("SUBJECT_ID") if "SUBJECT_ID" in header else 1
    try:
        table = [(int(r[t_col]), int(r[s_col])) for r in rows[1:]]
    except (ValueError, IndexError) as exc:
        raise ProtocolFileError(f"{path}: TEMPLATE_ID and SUBJECT_ID must be integers "
                                f"({exc})") from None
    arr = np.asarray(table, dtype=np.int64)
    return arr[:, 0].copy(), arr[:, 1].copy()


def read_ijb_meta(root: str | os.PathLike[str], target: str = "IJBC") -> IJBMeta:
    """Read the IJB metadata under ``root`` (the folder holding ``meta/`` and ``loose_crop/``).

    1:1 pairs and 1:N lists are optional (``None`` / empty when their files are absent); the
    image lists are required. Image names of ``*_face_tid_mid.txt`` and
    ``*_name_5pts_score.txt`` must agree row by row.
    """
    target = target.upper()
    if target not in ("IJBC", "IJBB"):
        raise ProtocolFileError(f"target must be 'IJBC' or 'IJBB', got {target!r}")
    root = Path(root)
    meta = root / "meta" if (root / "meta").is_dir() else root
    t = target.lower()
    names, templates, medias = read_template_media(meta / f"{t}_face_tid_mid.txt")
    names5, landmarks, scores = read_landmarks(meta / f"{t}_name_5pts_score.txt")
    if len(names5) != len(names) or not np.array_equal(names5, names):
        raise ProtocolFileError(f"{meta}: {t}_face_tid_mid.txt and {t}_name_5pts_score.txt list "
                                f"different images ({len(names)} vs {len(names5)} rows)")
    pair_file = meta / f"{t}_template_pair_label.txt"
    pairs = read_template_pairs(pair_file) if pair_file.is_file() else None
    gallery_names = ("G1", "G2") if target == "IJBC" else ("S1", "S2")
    galleries = {g: read_1n_csv(meta / f"{t}_1N_gallery_{g}.csv") for g in gallery_names
                 if (meta / f"{t}_1N_gallery_{g}.csv").is_file()}
    probe_file = meta / f"{t}_1N_probe_mixed.csv"
    probes = read_1n_csv(probe_file) if probe_file.is_file() else None
    image_dir = root / "loose_crop" if meta != root else root.parent / "loose_crop"
    return IJBMeta(names, templates, medias, landmarks, scores, pairs, galleries, probes,
                   image_dir, target)
