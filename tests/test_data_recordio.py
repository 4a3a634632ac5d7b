"""RecordIO without mxnet: framing, headers, the insightface layout, packing, workers."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from btnet_adapters.data import (CorruptImageError, DatasetError, FaceDataset, ImageFolderSource,
                                 IndexedRecordReader, IndexedRecordWriter, MissingDataError,
                                 RecordIOError, RecordIOSource, decode_image, pack_record,
                                 pack_recordio, unpack_record, write_synthetic_folder)
from btnet_adapters.data.recordio import MAGIC, frame_record

MAGIC_LE = struct.pack("<I", MAGIC)


def _frame(cflag: int, data: bytes) -> bytes:
    """One dmlc frame written out by hand: magic, lrecord, data, zero padding."""
    return MAGIC_LE + struct.pack("<I", (cflag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


def _write_rec(path: Path, records: list[tuple[int, bytes]]) -> None:
    """A .rec/.idx pair built with struct only (independent of IndexedRecordWriter)."""
    blob, lines = b"", []
    for key, data in records:
        lines.append(f"{key}\t{len(blob)}\n")
        blob += _frame(0, data)
    path.write_bytes(blob)
    path.with_suffix(".idx").write_text("".join(lines))


def test_frame_matches_dmlc_layout() -> None:
    assert frame_record(b"abcde") == _frame(0, b"abcde")
    assert frame_record(b"") == _frame(0, b"")
    # magic at aligned offsets 4 and 12 splits the record; the unaligned one at 17 does not
    data = b"AAAA" + MAGIC_LE + b"BBBBCCCC" + MAGIC_LE + b"D" + MAGIC_LE + b"EE"
    expected = _frame(1, b"AAAA") + _frame(2, b"BBBBCCCC") + _frame(3, b"D" + MAGIC_LE + b"EE")
    assert frame_record(data) == expected
    assert frame_record(MAGIC_LE) == _frame(1, b"") + _frame(3, b"")


def test_irheader_pack_unpack() -> None:
    data = pack_record(7.0, b"payload", id=3, id2=4)
    assert data[:24] == struct.pack("<IfQQ", 0, 7.0, 3, 4)
    header, payload = unpack_record(data)
    assert (header.flag, header.label, header.id, header.id2, payload) == (0, 7.0, 3, 4, b"payload")
    header, payload = unpack_record(pack_record([11.0, 20.0]))
    assert header.flag == 2 and header.label == (11.0, 20.0) and payload == b""
    with pytest.raises(RecordIOError):
        unpack_record(b"short")
    with pytest.raises(RecordIOError):
        unpack_record(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 4)


def test_writer_reader_roundtrip_multipart(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payloads = {k: rng.bytes(int(rng.integers(0, 50))) for k in range(20)}
    payloads[5] = MAGIC_LE * 3 + b"x"          # three splits
    payloads[6] = b"ab" + MAGIC_LE + b"cd"     # unaligned: one frame
    payloads[7] = pack_record(3.0, b"img", id=MAGIC)            # split inside the IRHeader
    payloads[8] = pack_record([1.0, 2.0], b"img", id=9)
    with IndexedRecordWriter(tmp_path / "a.rec") as w:
        for k in [3, 1, 0, 2] + list(range(4, 20)):
            w.write(k, payloads[k])
    reader = IndexedRecordReader(tmp_path / "a.rec")
    assert reader.keys.tolist() == [3, 1, 0, 2] + list(range(4, 20))
    for k, data in payloads.items():
        assert reader.read(k) == data
    assert reader.read_header(7) == (0, 3.0, MAGIC, 0)
    assert reader.read_header(8) == (2, (1.0, 2.0), 9, 0)
    assert 19 in reader and 20 not in reader
    with pytest.raises(RecordIOError, match="key 20"):
        reader.read(20)


def test_writer_is_atomic(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with IndexedRecordWriter(tmp_path / "t.rec") as w:
            w.write(0, b"data")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with IndexedRecordWriter(tmp_path / "t.rec") as w:
        w.write(0, b"data")
        with pytest.raises(RecordIOError, match="twice"):
            w.write(0, b"again")
        assert not (tmp_path / "t.rec").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.idx", "t.rec"]


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError):
        IndexedRecordReader(tmp_path / "none.rec")
    (tmp_path / "lonely.rec").write_bytes(_frame(0, b"x"))
    with pytest.raises(MissingDataError, match="needs its .idx"):
        RecordIOSource(tmp_path / "lonely.rec")
    _write_rec(tmp_path / "bad.rec", [(0, pack_record(0.0, b"x"))])
    (tmp_path / "bad.idx").write_text("0\t0\n1\n")
    with pytest.raises(RecordIOError, match="key<TAB>offset"):
        IndexedRecordReader(tmp_path / "bad.rec")
    (tmp_path / "bad.idx").write_text("0\t4\n")
    with pytest.raises(RecordIOError, match="bad magic"):
        IndexedRecordReader(tmp_path / "bad.rec").read(0)


def _mxface_index(reader: IndexedRecordReader) -> np.ndarray:
    """insightface arcface_torch MXFaceDataset's choice of image keys, restated."""
    header, _ = unpack_record(reader.read(0))
    if header.flag > 0:
        return np.arange(1, int(header.label[0]))
    return reader.keys


@pytest.mark.parametrize("with_header", [True, False])
def test_insightface_layout_compat(tmp_path: Path, with_header: bool) -> None:
    """Hand-built files with and without header record read as MXFaceDataset reads them."""
    labels = [0, 0, 1, 2, 2, 2]
    images = [(k + 1, pack_record(float(lab), b"img%d" % k, id=k + 1))
              for k, lab in enumerate(labels)]
    if with_header:
        idents = [(7, pack_record([1.0, 3.0])), (8, pack_record([3.0, 4.0])),
                  (9, pack_record([4.0, 7.0]))]
        records = [(0, pack_record([7.0, 10.0]))] + images + idents
    else:
        records = [(k - 1, data) for k, data in images]  # im2rec style: keys from 0
    _write_rec(tmp_path / "train.rec", records)
    source = RecordIOSource(tmp_path, progress=False)
    assert source.header == ((7, 10) if with_header else None)
    assert [source.key(i) for i in range(len(source))] == _mxface_index(source.reader).tolist()
    assert source.labels.tolist() == labels and source.num_classes == 3
    assert source.read_bytes(3) == b"img3"
    assert source.class_to_idx == {"0": 0, "1": 1, "2": 2}


def test_header_with_inconsistent_ranges_falls_back_to_labels(tmp_path: Path) -> None:
    labels = [1, 0, 0]  # identity record 0 claims keys 1..2 but key 1 says label 1
    records = [(0, pack_record([4.0, 6.0]))]
    records += [(k + 1, pack_record(float(lab), b"i")) for k, lab in enumerate(labels)]
    records += [(4, pack_record([1.0, 3.0])), (5, pack_record([3.0, 4.0]))]
    _write_rec(tmp_path / "train.rec", records)
    source = RecordIOSource(tmp_path / "train.rec", progress=False)
    assert source.labels.tolist() == labels


def test_label_range_checked(tmp_path: Path) -> None:
    _write_rec(tmp_path / "x.rec", [(0, pack_record(0.0, b"a")), (1, pack_record(5.0, b"b"))])
    assert RecordIOSource(tmp_path / "x.rec", progress=False).num_classes == 6
    with pytest.raises(ValueError, match="labels out of range"):
        RecordIOSource(tmp_path / "x.rec", num_classes=5, progress=False)
    _write_rec(tmp_path / "y.rec", [(0, pack_record(1.5, b"a"))])
    with pytest.raises(ValueError, match="not a non-negative integer"):
        RecordIOSource(tmp_path / "y.rec", progress=False)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ImageFolderSource]:
    root = tmp_path_factory.mktemp("faces")
    folder = write_synthetic_folder(root / "folder", num_identities=5, per_identity=4, size=24)
    source = ImageFolderSource(folder)
    summary = pack_recordio(source, root / "rec", progress=False)
    assert (summary.num_images, summary.num_classes, summary.skipped) == (20, 5, [])
    return root / "rec", source


def test_pack_roundtrip_exact(packed: tuple[Path, ImageFolderSource]) -> None:
    rec_dir, folder = packed
    source = RecordIOSource(rec_dir, progress=False)
    assert source.header == (21, 26)
    assert source.labels.tolist() == folder.labels.tolist()
    assert source.class_to_idx == folder.class_to_idx      # names from train.classes.json
    for i in range(len(source)):
        assert np.array_equal(source.load(i), folder.load(i))
    assert (rec_dir / "property").read_text() == "5,24,24\n"
    assert [source.key(i) for i in range(len(source))] == _mxface_index(source.reader).tolist()


def test_pack_skips_corrupt_and_reencodes(tmp_path: Path) -> None:
    folder = write_synthetic_folder(tmp_path / "f", num_identities=3, per_identity=2, size=16,
                                    image_format="pgm")
    (folder / "id0001" / "0000.pgm").write_bytes(b"P5\n16 16\n255\n" + b"\0" * 10)  # truncated
    source = ImageFolderSource(folder)
    summary = pack_recordio(source, tmp_path / "r", progress=False)
    assert summary.num_images == 5 and len(summary.skipped) == 1
    assert "id0001/0000.pgm" in summary.skipped[0][0]
    rec = RecordIOSource(tmp_path / "r", progress=False)
    assert rec.labels.tolist() == [0, 0, 1, 2, 2]
    assert rec.read_bytes(0).startswith(b"\x89PNG")          # PGM re-encoded losslessly
    assert np.array_equal(rec.load(0), source.load(0))


def test_pack_keeps_empty_identity_ranges(tmp_path: Path) -> None:
    folder = write_synthetic_folder(tmp_path / "f", num_identities=3, per_identity=1, size=8)
    (folder / "id0000" / "0000.png").write_bytes(b"not an image")
    pack_recordio(ImageFolderSource(folder), tmp_path / "r", progress=False)
    rec = RecordIOSource(tmp_path / "r", progress=False)
    assert rec.num_classes == 3 and rec.labels.tolist() == [1, 2]
    ranges = [unpack_record(rec.reader.read(k))[0].label for k in (3, 4, 5)]
    assert ranges == [(1.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    for path in folder.glob("*/*.png"):
        path.write_bytes(b"broken")
    with pytest.raises(DatasetError, match="no readable image"):
        pack_recordio(ImageFolderSource(folder), tmp_path / "none", progress=False)
    assert not list((tmp_path / "none").glob("*.rec"))


def test_corrupt_record_is_reported(tmp_path: Path) -> None:
    _write_rec(tmp_path / "c.rec", [(0, pack_record(0.0, b"garbage"))])
    source = RecordIOSource(tmp_path / "c.rec", progress=False)
    with pytest.raises(CorruptImageError, match=r"c\.rec#0"):
        source.load(0)


def test_random_access_in_worker_processes(packed: tuple[Path, ImageFolderSource]) -> None:
    rec_dir, folder = packed
    source = RecordIOSource(rec_dir, progress=False)
    source.load(0)  # the parent opens its descriptor before the workers fork
    dataset = FaceDataset(source, size=24, flip=False)
    order = [17, 3, 11, 0, 19, 8, 5, 14]
    loader = DataLoader(dataset, batch_size=2, sampler=order, num_workers=2)
    images, labels = map(torch.cat, zip(*loader, strict=True))
    assert labels.tolist() == [int(folder.labels[i]) for i in order]
    for got, i in zip(images, order, strict=True):
        expected = torch.from_numpy(decode_image(folder.read_bytes(i))).permute(2, 0, 1)
        assert torch.equal(((got * 0.5 + 0.5) * 255).round().to(torch.uint8), expected)


class _ReaderPids(Dataset):
    """Which process read, and which process the reader's descriptor belongs to."""

    def __init__(self, source: RecordIOSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[int, int]:
        self.source.read_bytes(index)
        return os.getpid(), self.source.reader._pid


def test_each_worker_opens_its_own_descriptor(packed: tuple[Path, ImageFolderSource]) -> None:
    source = RecordIOSource(packed[0], progress=False)
    source.read_bytes(0)
    assert source.reader._pid == os.getpid()
    loader = DataLoader(_ReaderPids(source), batch_size=1, num_workers=2)
    pairs = [(int(a), int(b)) for a, b in loader]
    assert all(worker == owner != os.getpid() for worker, owner in pairs)
    assert len({worker for worker, _ in pairs}) == 2
