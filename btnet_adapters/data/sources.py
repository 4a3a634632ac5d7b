"""Labelled face-image sources: identity folders, TSV lists and insightface RecordIO.

A source lists samples, their integer labels and the identity → label mapping, and returns a
sample's encoded bytes (:meth:`FaceSource.read_bytes`) or decoded RGB pixels
(:meth:`FaceSource.load`). Transforms live in :mod:`btnet_adapters.data.dataset`.

Label assignment is deterministic: identity names sorted as strings get labels 0..K-1, unless
a ``class_to_idx`` mapping is given (e.g. the mapping the trunk's classifier was trained with,
so a branch trained on the same identities reuses the frozen class centres). Labels are checked
against ``num_classes`` when it is given. Everything is validated when the source is built,
before any compute: missing files, a ``.rec`` without its ``.idx``, an empty dataset, labels out
of range.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, ClassVar
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from ..progress import progress_bar

from .decode import IMAGE_EXTENSIONS, decode_image
from .errors import CorruptImageError, DatasetError, MissingDataError, RecordIOError
from .recordio import IndexedRecordReader, IRHeader, unpack_record

logger = logging.getLogger(__name__)

#: Header lines (first two fields, lower case) recognised at the top of a TSV list.
TSV_HEADERS = (("path", "identity"), ("path", "label"))


class _StringTable:
    """Many strings in one byte buffer + offsets (no per-item Python objects, so forked
    DataLoader workers do not copy the pages through reference counting)."""

    def __init__(self, items: Iterable[str]) -> None:
        encoded = [s.encode("utf-8") for s in items]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:end].tobytes().decode("utf-8")


def _assign_labels(raw: np.ndarray, raw_classes: Sequence[str],
                   class_to_idx: Mapping[str, int] | None, num_classes: int | None,
                   where: str) -> tuple[np.ndarray, dict[str, int], int]:
    """Map per-sample indices into ``raw_classes`` to final labels; validate the range."""
    if len(raw) == 0:
        raise DatasetError(f"{where}: the dataset is empty (no labelled images found)")
    if class_to_idx is None:
        mapping = {name: i for i, name in enumerate(raw_classes)}
        labels = raw.astype(np.int64)
    else:
        mapping = {str(k): int(v) for k, v in class_to_idx.items()}
        if any(v < 0 for v in mapping.values()):
            raise DatasetError(f"{where}: class_to_idx holds negative labels; labels must be >= 0")
        used = np.unique(raw)
        missing = [raw_classes[u] for u in used if raw_classes[u] not in mapping]
        if missing:
            raise DatasetError(
                f"{where}: {len(missing)} identities are not in the given class_to_idx "
                f"(e.g. {missing[:5]}); the mapping must cover every identity of the data")
        lut = np.array([mapping.get(name, -1) for name in raw_classes], dtype=np.int64)
        labels = lut[raw]
    top = int(labels.max()) + 1
    if num_classes is None:
        num_classes = max(top, max(mapping.values(), default=-1) + 1)
    elif int(num_classes) < top:
        bad = int(np.count_nonzero(labels >= int(num_classes)))
        raise DatasetError(
            f"{where}: labels out of range: {bad} samples have labels >= num_classes="
            f"{num_classes} (largest label {top - 1}); accepted: 0..{int(num_classes) - 1}")
    return labels, mapping, int(num_classes)


class FaceSource(abc.ABC):
    """Base class: a fixed list of labelled face images.

    Attributes:
        labels: int64 array, the label of each sample.
        class_to_idx: identity name → label.
        num_classes: size of the label space (labels are in ``0..num_classes-1``).
    """

    kind: ClassVar[str]
    labels: np.ndarray
    class_to_idx: dict[str, int]
    num_classes: int

    def _set_labels(self, raw: np.ndarray, raw_classes: Sequence[str],
                    class_to_idx: Mapping[str, int] | None, num_classes: int | None,
                    where: str) -> None:
        self.labels, self.class_to_idx, self.num_classes = _assign_labels(
            np.asarray(raw, dtype=np.int64), raw_classes, class_to_idx, num_classes, where)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[str]:
        """Identity names ordered by label (``""`` for labels no name maps to)."""
        names = [""] * self.num_classes
        for name, label in self.class_to_idx.items():
            if label < self.num_classes:
                names[label] = name
        return names

    @abc.abstractmethod
    def read_bytes(self, index: int) -> bytes:
        """Encoded image bytes of sample ``index`` (:class:`CorruptImageError` if unreadable)."""

    @abc.abstractmethod
    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from (a path or ``file.rec#key``), for messages."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (kind, paths, sizes), recorded with a run."""

    def load(self, index: int) -> np.ndarray:
        """Decoded ``H×W×3`` RGB uint8 pixels of sample ``index``."""
        return decode_image(self.read_bytes(index), self.describe(index))


class _FileListSource(FaceSource):
    """Samples that are image files below a root folder."""

    root: Path
    _paths: _StringTable

    def path(self, index: int) -> Path:
        """Absolute path of sample ``index``."""
        return self.root / self._paths[index]

    def describe(self, index: int) -> str:
        return str(self.path(index))

    def read_bytes(self, index: int) -> bytes:
        try:
            return self.path(index).read_bytes()
        except OSError as exc:
            raise CorruptImageError(f"{self.path(index)}: cannot read ({exc})") from None


class ImageFolderSource(_FileListSource):
    """``root/<identity>/<image>`` folders.

    Args:
        root: folder holding one sub-folder per identity.
        class_to_idx: optional identity → label mapping to use instead of sorted order.
        num_classes: optional size of the label space to check labels against.
        extensions: accepted image suffixes (case-insensitive).

    Identities are sorted by name (plain string order) and get labels 0..K-1; files inside
    an identity are sorted by name. Hidden entries and non-image files are ignored; identity
    folders without images are skipped with a warning.
    """

    kind = "folder"

    def __init__(self, root: str | os.PathLike[str], *,
                 class_to_idx: Mapping[str, int] | None = None, num_classes: int | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingDataError(f"image folder not found: {self.root}")
        exts = tuple(e.lower() for e in extensions)
        identities = sorted(e.name for e in os.scandir(self.root)
                            if e.is_dir() and not e.name.startswith("."))
        paths: list[str] = []
        raw: list[int] = []
        names: list[str] = []
        empty: list[str] = []
        for name in identities:
            files = sorted(e.name for e in os.scandir(self.root / name)
                           if e.is_file() and not e.name.startswith(".")
                           and e.name.lower().endswith(exts))
            if not files:
                empty.append(name)
                continue
            raw.extend([len(names)] * len(files))
            paths.extend(f"{name}/{f}" for f in files)
            names.append(name)
        if empty:
            logger.warning("%s: %d identity folders hold no images and are skipped (e.g. %s)",
                           self.root, len(empty), empty[:5])
        if not paths:
            raise DatasetError(f"{self.root}: no images found; expected root/<identity>/<image> "
                               f"with suffixes {exts}")
        self._paths = _StringTable(paths)
        self._set_labels(np.asarray(raw), names, class_to_idx, num_classes, str(self.root))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root), "num_images": len(self),
                "num_classes": self.num_classes}


class UnlabeledFolderSource(_FileListSource):
    """Every image under ``root`` (sub-folders searched, sorted by path), without identities: all
    get label 0. For label-free training (distillation needs no identities), e.g. a folder of
    one's own aligned camera crops.

    Args:
        root: the folder.
        extensions: accepted image suffixes (case-insensitive).
    """

    kind = "unlabeled"

    def __init__(self, root: str | os.PathLike[str], *, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingDataError(f"image folder not found: {self.root}")
        exts = tuple(e.lower() for e in extensions)
        paths = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                       if p.is_file() and p.suffix.lower() in exts
                       and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        if not paths:
            raise DatasetError(f"{self.root}: no images found (searched sub-folders too) with suffixes {exts}")
        self._paths = _StringTable(paths)
        self._set_labels(np.zeros(len(paths), dtype=np.int64), ["unlabeled"], None, None, str(self.root))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root), "num_images": len(self)}


class TSVSource(_FileListSource):
    """A list of ``path<TAB>identity`` lines, paths relative to ``root``.

    Args:
        tsv: the list file. A first line ``path<TAB>identity`` (or ``path<TAB>label``) is a
            header and skipped; blank lines are skipped; extra columns are ignored.
        root: folder the paths are relative to (default: the list's folder). Absolute paths
            are used as they are.
        class_to_idx: optional identity → label mapping to use instead of sorted order.
        num_classes: optional size of the label space to check labels against.
        check_files: verify that every listed file exists (one ``stat`` per file).
    """

    kind = "tsv"

    def __init__(self, tsv: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
                 *, class_to_idx: Mapping[str, int] | None = None,
                 num_classes: int | None = None, check_files: bool = True) -> None:
        self.tsv = Path(tsv)
        if not self.tsv.is_file():
            raise MissingDataError(f"TSV list not found: {self.tsv}")
        self.root = Path(root) if root is not None else self.tsv.parent
        if not self.root.is_dir():
            raise MissingDataError(f"root folder of {self.tsv} not found: {self.root}")
        paths: list[str] = []
        idents: list[str] = []
        with self.tsv.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if not paths and tuple(x.strip().lower() for x in fields[:2]) in TSV_HEADERS:
                    continue
                if len(fields) < 2 or not fields[0] or not fields[1]:
                    raise DatasetError(f"{self.tsv}:{lineno}: expected 'path<TAB>identity', "
                                       f"got {line!r}")
                paths.append(fields[0])
                idents.append(fields[1].strip())
        if check_files:
            missing = [p for p in paths if not (self.root / p).is_file()]
            if missing:
                raise MissingDataError(
                    f"{self.tsv}: {len(missing)} of {len(paths)} listed files do not exist under "
                    f"{self.root} (e.g. {missing[:5]})")
        names = sorted(set(idents))
        index = {name: i for i, name in enumerate(names)}
        self._paths = _StringTable(paths)
        self._set_labels(np.array([index[i] for i in idents], dtype=np.int64), names,
                         class_to_idx, num_classes, str(self.tsv))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tsv": str(self.tsv), "root": str(self.root),
                "num_images": len(self), "num_classes": self.num_classes}


def _record_label(header: IRHeader, where: str) -> int:
    """The integer class label of an image record (first value of a label array)."""
    value = header.label if header.flag == 0 else header.label[0]
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise DatasetError(f"{where}: label {value} is not a non-negative integer")
    return int(value)


def classes_path(rec_path: str | os.PathLike[str]) -> Path:
    """The optional identity-name list written next to a ``.rec`` (``<stem>.classes.json``)."""
    rec = Path(rec_path)
    return rec.with_name(rec.stem + ".classes.json")


class RecordIOSource(FaceSource):
    """insightface RecordIO (``train.rec`` + ``train.idx``), read without mxnet.

    Args:
        path: the ``.rec`` file, or a folder holding ``train.rec`` and ``train.idx``.
        idx_path: the index (default: the ``.rec`` path with suffix ``.idx``).
        class_to_idx: optional identity → label mapping (identity names are the entries of
            ``<stem>.classes.json`` when present, else the labels written as decimal strings).
        num_classes: optional size of the label space to check labels against.
        progress: show a tqdm bar while labels are read.

    Layout, as insightface's ``MXFaceDataset`` reads it: when record 0 is a header record
    (``flag >= 2``, empty payload) its label ``(start, end)`` says that images are records
    ``1..start-1`` and identities records ``start..end-1``, each holding the ``(first, stop)``
    key range of its images; identity ``j`` has label ``j``. Labels then come from those ranges
    (cheap: one small read per identity; a sample of image records is checked against them,
    and every image read verifies its own label). Without a header record every key of the
    ``.idx`` is an image (in index order) and labels are read from each record once (tqdm).
    Labels are the first value when a record holds a label array.
    """

    kind = "recordio"

    def __init__(self, path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None,
                 *, class_to_idx: Mapping[str, int] | None = None,
                 num_classes: int | None = None, progress: bool = True) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "train.rec"
        self.reader = IndexedRecordReader(path, idx_path)
        self.rec_path = self.reader.rec_path
        self.progress = progress
        self.header = self._read_header_record()
        raw: np.ndarray | None = None
        if self.header is not None:
            start, end = self.header
            self._keys = np.arange(1, start, dtype=np.int64)
            absent = ~self.reader.has_keys(self._keys)
            if absent.any():
                raise RecordIOError(
                    f"{self.rec_path}: the header record announces images 1..{start - 1} but "
                    f"{int(absent.sum())} keys are missing from {self.reader.idx_path} "
                    f"(e.g. {self._keys[absent][:5].tolist()})")
            raw = self._labels_from_ranges(start, end)
        else:
            self._keys = self.reader.keys.copy()
        if raw is None:
            raw = self._scan_labels()
        count = int(raw.max()) + 1 if len(raw) else 0
        if self.header is not None:
            count = max(count, self.header[1] - self.header[0])
        names = self._class_names(count)
        self._raw = raw
        self._set_labels(raw, names, class_to_idx, num_classes, str(self.rec_path))

    def _read_header_record(self) -> tuple[int, int] | None:
        if 0 not in self.reader:
            return None
        header, payload = unpack_record(self.reader.read(0))
        if header.flag < 2 or payload:
            return None
        start, end = int(header.label[0]), int(header.label[1])
        if start < 1 or end < start:
            raise RecordIOError(f"{self.rec_path}: header record range ({start}, {end}) is "
                                "invalid; expected 1 <= start <= end")
        return start, end

    def _labels_from_ranges(self, start: int, end: int) -> np.ndarray | None:
        """Labels from the identity records, or ``None`` (with a log line) if unusable."""
        ident_keys = np.arange(start, end, dtype=np.int64)
        if len(ident_keys) == 0 or not self.reader.has_keys(ident_keys).all():
            logger.info("%s: no complete identity records; reading labels from image records",
                        self.rec_path)
            return None
        labels = np.full(start - 1, -1, dtype=np.int64)
        firsts: list[tuple[int, int]] = []
        bar = progress_bar(ident_keys, desc=f"identities of {self.rec_path.name}", unit="id",
                           disable=not self.progress or len(ident_keys) < 10_000)
        for j, key in enumerate(bar):
            header = self.reader.read_header(int(key))
            if header.flag < 2:
                logger.warning("%s: identity record %d holds no (first, stop) range; reading "
                               "labels from image records", self.rec_path, key)
                return None
            a, b = int(header.label[0]), int(header.label[1])
            if not 1 <= a <= b <= start or (labels[a - 1:b - 1] != -1).any():
                logger.warning("%s: identity ranges are invalid or overlap at record %d "
                               "(%d, %d); reading labels from image records", self.rec_path,
                               key, a, b)
                return None
            labels[a - 1:b - 1] = j
            if b > a:
                firsts.append((a, j))
        if (labels < 0).any():
            logger.warning("%s: %d images are in no identity range; reading labels from image "
                           "records", self.rec_path, int((labels < 0).sum()))
            return None
        step = max(1, len(firsts) // 16)
        for key, expected in firsts[::step]:
            got = _record_label(self.reader.read_header(key), f"{self.rec_path}#{key}")
            if got != expected:
                logger.warning("%s: record %d has label %d but identity range %d; reading "
                               "labels from image records", self.rec_path, key, got, expected)
                return None
        return labels

    def _scan_labels(self) -> np.ndarray:
        labels = np.empty(len(self._keys), dtype=np.int64)
        keep = np.ones(len(self._keys), dtype=bool)
        bar = progress_bar(self._keys, desc=f"labels of {self.rec_path.name}", unit="rec",
                           disable=not self.progress or len(self._keys) < 10_000)
        for i, key in enumerate(bar):
            try:
                labels[i] = _record_label(self.reader.read_header(int(key)),
                                          f"{self.rec_path}#{key}")
            except RecordIOError as exc:
                logger.warning("skipping unreadable record %s#%d: %s", self.rec_path, key, exc)
                keep[i] = False
        self._keys = self._keys[keep]
        return labels[keep]

    def _class_names(self, count: int) -> list[str]:
        names_file = classes_path(self.rec_path)
        if names_file.is_file():
            names = json.loads(names_file.read_text(encoding="utf-8"))
            if (isinstance(names, list) and len(names) >= count
                    and len(set(map(str, names))) == len(names)):
                return [str(n) for n in names]
            logger.warning("%s does not list %d distinct identity names; using labels as names",
                           names_file, count)
        return [str(k) for k in range(count)]

    def key(self, index: int) -> int:
        """RecordIO key of sample ``index``."""
        return int(self._keys[index])

    def describe(self, index: int) -> str:
        return f"{self.rec_path}#{self.key(index)}"

    def read_bytes(self, index: int) -> bytes:
        where = self.describe(index)
        try:
            header, payload = unpack_record(self.reader.read(self.key(index)))
            label = _record_label(header, where)
        except (RecordIOError, DatasetError) as exc:
            raise CorruptImageError(f"{where}: {exc}") from None
        if label != self._raw[index]:
            raise CorruptImageError(f"{where}: record label {label} differs from the label "
                                    f"{self._raw[index]} read when the dataset was opened")
        return payload

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rec": str(self.rec_path), "idx": str(self.reader.idx_path),
                "num_images": len(self), "num_classes": self.num_classes,
                "header": list(self.header) if self.header else None}


def open_source(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                class_to_idx: Mapping[str, int] | None = None,
                num_classes: int | None = None, unlabeled: bool = False) -> FaceSource:
    """Open a source by what ``path`` is.

    - a ``.rec`` file, or a folder holding ``train.rec``: :class:`RecordIOSource`;
    - a ``.tsv`` / ``.txt`` / ``.lst`` file: :class:`TSVSource` (paths relative to ``root``,
      default the list's folder);
    - any other folder: :class:`ImageFolderSource`, or with ``unlabeled``
      :class:`UnlabeledFolderSource` (every image below it; the labels of lists and ``.rec``
      files are read but the caller ignores them).
    """
    p = Path(path)
    if unlabeled and p.is_dir() and not (p / "train.rec").is_file():
        return UnlabeledFolderSource(p)
    kw: dict[str, Any] = {"class_to_idx": class_to_idx, "num_classes": num_classes}
    if p.is_file() and p.suffix.lower() == ".rec":
        return RecordIOSource(p, **kw)
    if p.is_file() and p.suffix.lower() in (".tsv", ".txt", ".lst"):
        return TSVSource(p, root, **kw)
    if p.is_dir():
        if (p / "train.rec").is_file():
            return RecordIOSource(p, **kw)
        return ImageFolderSource(p, **kw)
    if p.is_file():
        raise DatasetError(f"{p}: unknown data file; accepted: a .rec file, a .tsv/.txt/.lst list "
                           "or a folder (identity sub-folders, or train.rec + train.idx)")
    raise MissingDataError(f"data not found: {p}")
