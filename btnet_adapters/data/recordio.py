"""MXNet IndexedRecordIO (``.rec`` + ``.idx``) read and written without mxnet.

Format (dmlc-core ``recordio``, as used by the insightface MS1M / Glint / WebFace releases):

- ``.idx``: text lines ``key<TAB>offset`` giving the byte offset of each record in ``.rec``.
- ``.rec``: a sequence of frames ``magic (uint32 0xced7230a) | lrecord (uint32) | data | pad``.
  ``lrecord`` holds a continuation flag in its upper 3 bits and the data length in its lower 29;
  data is zero-padded to a multiple of 4 bytes. A record whose data contains the magic word at
  a 4-byte aligned position is split there into several frames (flag 1 = first, 2 = middle,
  3 = last, 0 = whole record) and the reader puts the magic word back between the parts.
- A record's data starts with the image-record header ``IRHeader`` (``struct '<IfQQ'``: flag,
  label, id, id2); when ``flag > 0``, ``flag`` float32 labels follow and the scalar label is 0.
  The rest is the payload (encoded JPEG / PNG bytes).

Reading uses ``os.pread`` on a file descriptor opened lazily per process, so a reader can be
shared by DataLoader worker processes (forked or spawned) without sharing a file offset.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from types import TracebackType
from typing import NamedTuple
from collections.abc import Sequence

import numpy as np

from .._atomic import create_temp
from .errors import MissingDataError, RecordIOError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
#: Size in bytes of the ``IRHeader`` struct.
IR_HEADER_SIZE = _IR.size
_MAX_LENGTH = (1 << 29) - 1


class IRHeader(NamedTuple):
    """Image-record header: ``flag`` (number of float32 labels that follow, 0 for a scalar
    label), ``label`` (a float, or a tuple of ``flag`` floats), ``id`` and ``id2``."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack_record(label: float | Sequence[float], payload: bytes = b"", id: int = 0,
                id2: int = 0) -> bytes:
    """Build a record's data: ``IRHeader`` + optional label array + payload.

    A scalar ``label`` is stored in the header (``flag = 0``); a sequence is stored after it as
    float32 values with ``flag = len(label)`` (the insightface header and identity records).
    """
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _IR.pack(0, float(label), int(id), int(id2)) + bytes(payload)
    values = np.asarray(label, dtype="<f4").reshape(-1)
    if values.size == 0:
        raise RecordIOError("a label sequence must hold at least one value")
    return _IR.pack(values.size, 0.0, int(id), int(id2)) + values.tobytes() + bytes(payload)


def unpack_record(data: bytes) -> tuple[IRHeader, bytes]:
    """Split a record's data into its :class:`IRHeader` and the payload bytes."""
    if len(data) < IR_HEADER_SIZE:
        raise RecordIOError(f"record of {len(data)} bytes is shorter than an IRHeader (24 bytes)")
    flag, label, rid, rid2 = _IR.unpack_from(data)
    start = IR_HEADER_SIZE
    if flag > 0:
        end = start + 4 * flag
        if len(data) < end:
            raise RecordIOError(f"record announces {flag} labels but holds only {len(data)} bytes")
        label = tuple(float(v) for v in np.frombuffer(data, dtype="<f4", count=flag,
                                                      offset=start))
        start = end
    return IRHeader(flag, label, rid, rid2), data[start:]


def frame_record(data: bytes) -> bytes:
    """Encode one record as dmlc frames (split at aligned magic words, padded to 4 bytes)."""
    if len(data) > _MAX_LENGTH:
        raise RecordIOError(f"record of {len(data)} bytes exceeds the RecordIO limit of 2^29 - 1")
    parts: list[bytes] = []
    start = 0
    pos = data.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            parts.append(data[start:pos])
            start = pos + 4
        pos = data.find(_MAGIC_BYTES, pos + 1)
    parts.append(data[start:])
    out = bytearray()
    for i, part in enumerate(parts):
        if len(parts) == 1:
            cflag = 0
        else:
            cflag = 1 if i == 0 else (3 if i == len(parts) - 1 else 2)
        out += _FRAME.pack(MAGIC, (cflag << 29) | len(part)) + part
        out += b"\0" * (-len(part) % 4)
    return bytes(out)


def read_index(idx_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file into ``(keys, offsets)`` int64 arrays, in file order."""
    path = Path(idx_path)
    if not path.is_file():
        raise MissingDataError(f"RecordIO index not found: {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:  # numpy's C text parser: ~10x faster than splitting, for million-line indexes
            flat = np.fromstring(path.read_bytes(), dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            raise RecordIOError(f"{path}: keys and offsets must be integers") from None
    if len(flat) % 2:
        raise RecordIOError(
            f"{path}: every line must be 'key<TAB>offset'; found an odd number of values")
    table = flat.reshape(-1, 2)
    return table[:, 0].copy(), table[:, 1].copy()


def default_idx_path(rec_path: Path, idx_path: str | os.PathLike[str] | None) -> Path:
    """``idx_path``, or the ``.rec`` path with the suffix ``.idx``."""
    return Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")


class IndexedRecordReader:
    """Random access to the records of a ``.rec`` file through its ``.idx``.

    Args:
        rec_path: the ``.rec`` file.
        idx_path: its index; default: the same path with the suffix ``.idx``.

    The key → offset table is kept in numpy arrays (shared copy-on-write by forked workers,
    no per-element reference counting). The file is opened on first read in each process.
    """

    def __init__(self, rec_path: str | os.PathLike[str],
                 idx_path: str | os.PathLike[str] | None = None) -> None:
        self._fd: int | None = None
        self._pid: int | None = None
        self.rec_path = Path(rec_path)
        self.idx_path = default_idx_path(self.rec_path, idx_path)
        if not self.rec_path.is_file():
            raise MissingDataError(f"RecordIO file not found: {self.rec_path}")
        if not self.idx_path.is_file():
            raise MissingDataError(
                f"{self.rec_path} has no index {self.idx_path}: a .rec needs its .idx "
                "(key<TAB>offset lines) for random access"
            )
        self.keys, offsets = read_index(self.idx_path)
        self.size = self.rec_path.stat().st_size
        if len(offsets) and (offsets.min() < 0 or offsets.max() >= self.size):
            raise RecordIOError(
                f"{self.idx_path} points outside {self.rec_path} ({self.size} bytes)")
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[order]
        self._sorted_offsets = offsets[order]
        if len(order) > 1 and np.any(np.diff(self._sorted_keys) == 0):
            raise RecordIOError(f"{self.idx_path} lists a key more than once")

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (int, np.integer)):
            return False
        pos = int(np.searchsorted(self._sorted_keys, key))
        return pos < len(self._sorted_keys) and self._sorted_keys[pos] == key

    def has_keys(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``keys`` the index holds."""
        keys = np.asarray(keys, dtype=np.int64)
        if len(self._sorted_keys) == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.searchsorted(self._sorted_keys, keys).clip(0, len(self._sorted_keys) - 1)
        return self._sorted_keys[pos] == keys

    def offset(self, key: int) -> int:
        """Byte offset of record ``key`` (:class:`RecordIOError` if the index lacks it)."""
        if key not in self:
            raise RecordIOError(f"key {key} is not in {self.idx_path}")
        return int(self._sorted_offsets[np.searchsorted(self._sorted_keys, key)])

    def _pread(self, n: int, offset: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = os.getpid()
        if hasattr(os, "pread"):
            data = os.pread(self._fd, n, offset)
        else:  # pragma: no cover - platforms without pread (Windows)
            os.lseek(self._fd, offset, os.SEEK_SET)
            data = os.read(self._fd, n)
        if len(data) != n:
            raise RecordIOError(f"{self.rec_path}: truncated record at offset {offset}")
        return data

    def _frame_head(self, offset: int) -> tuple[int, int]:
        magic, lrec = _FRAME.unpack(self._pread(_FRAME.size, offset))
        if magic != MAGIC:
            raise RecordIOError(f"{self.rec_path}: bad magic 0x{magic:08x} at offset {offset}")
        return lrec >> 29, lrec & _MAX_LENGTH

    def read_at(self, offset: int) -> bytes:
        """Data of the record starting at byte ``offset`` (multi-part records joined)."""
        out = bytearray()
        first = True
        while True:
            cflag, length = self._frame_head(offset)
            if (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)):
                raise RecordIOError(
                    f"{self.rec_path}: unexpected continuation flag {cflag} at offset {offset}")
            offset += _FRAME.size
            out += self._pread(length, offset) if length else b""
            offset += length + (-length % 4)
            if cflag in (0, 3):
                return bytes(out)
            out += _MAGIC_BYTES
            first = False

    def read(self, key: int) -> bytes:
        """Data of record ``key``."""
        return self.read_at(self.offset(key))

    def read_header(self, key: int) -> IRHeader:
        """Only the :class:`IRHeader` of record ``key`` (reads a few bytes, not the payload)."""
        offset = self.offset(key)
        _, length = self._frame_head(offset)
        start = offset + _FRAME.size
        if length >= IR_HEADER_SIZE:
            head = self._pread(IR_HEADER_SIZE, start)
            need = IR_HEADER_SIZE + 4 * _IR.unpack_from(head)[0]
            if need <= length:
                data = head if need == IR_HEADER_SIZE else self._pread(need, start)
                return unpack_record(data)[0]
        return unpack_record(self.read_at(offset))[0]  # header split across frames

    def close(self) -> None:
        """Close this process's file descriptor (reopened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


class IndexedRecordWriter:
    """Write a ``.rec`` + ``.idx`` pair atomically.

    Records go to temporary files next to the targets; :meth:`close` (or leaving the ``with``
    block normally) syncs them and renames them into place, ``.rec`` first (an old ``.idx`` is
    removed just before), so a ``.idx`` is only ever visible next to the complete ``.rec`` it
    indexes. An exception inside the ``with`` block removes the temporary files and leaves
    existing targets untouched.
    """

    def __init__(self, rec_path: str | os.PathLike[str],
                 idx_path: str | os.PathLike[str] | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = default_idx_path(self.rec_path, idx_path)
        fd, self._tmp_rec = create_temp(self.rec_path)
        self._file = os.fdopen(fd, "wb")
        self._entries: list[str] = []
        self._keys: set[int] = set()
        self._offset = 0

    def write(self, key: int, data: bytes) -> int:
        """Append one record under ``key``; returns its byte offset."""
        key = int(key)
        if key in self._keys:
            raise RecordIOError(f"key {key} written twice to {self.rec_path}")
        if self._file.closed:
            raise RecordIOError(f"{self.rec_path}: writer already closed")
        framed = frame_record(data)
        offset = self._offset
        self._file.write(framed)
        self._offset += len(framed)
        self._keys.add(key)
        self._entries.append(f"{key}\t{offset}\n")
        return offset

    def close(self) -> None:
        """Finish both files and move them into place."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        fd, tmp_idx = create_temp(self.idx_path)
        try:
            with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
                f.writelines(self._entries)
                f.flush()
                os.fsync(f.fileno())
            self.idx_path.unlink(missing_ok=True)  # never an old index next to the new records
            os.replace(self._tmp_rec, self.rec_path)
            os.replace(tmp_idx, self.idx_path)
        except BaseException:
            tmp_idx.unlink(missing_ok=True)
            self._tmp_rec.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        """Drop everything written so far."""
        if not self._file.closed:
            self._file.close()
        self._tmp_rec.unlink(missing_ok=True)

    def __enter__(self) -> "IndexedRecordWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
