"""Identity folders, TSV lists, label mapping, class index files and the real CelebA split."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from btnet_adapters.data import (DatasetError, ImageFolderSource, MissingDataError,
                                 RecordIOSource, TSVSource, open_source, pack_recordio,
                                 read_class_index, write_class_index, write_synthetic_folder)
from btnet_adapters.data.pack import main

ORL = Path(__file__).resolve().parents[1] / "btnet_adapters" / "assets" / "orl"


def test_folder_sorted_labels_and_grey_images() -> None:
    source = ImageFolderSource(ORL)
    assert len(source) == 400 and source.num_classes == 40
    names = sorted(f"s{i}" for i in range(1, 41))                     # string order: s1, s10, ...
    assert source.classes == names
    assert source.class_to_idx["s10"] == 1
    assert np.bincount(source.labels).tolist() == [10] * 40
    assert source.describe(0).endswith("s1/1.pgm") and source.describe(1).endswith("s1/10.pgm")
    image = source.load(0)
    assert image.shape == (112, 92, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])                  # grey to 3 channels


def test_folder_skips_hidden_empty_and_non_images(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    root = write_synthetic_folder(tmp_path / "f", num_identities=2, per_identity=2, size=8)
    (root / "id0000" / "notes.txt").write_text("x")
    (root / "id0000" / ".hidden.png").write_bytes(b"")
    (root / ".cache").mkdir()
    (root / "empty").mkdir()
    (root / "stray.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        source = ImageFolderSource(root)
    assert "hold no images" in caplog.text
    assert source.classes == ["id0000", "id0001"] and source.labels.tolist() == [0, 0, 1, 1]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError):
        ImageFolderSource(tmp_path / "absent")
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        ImageFolderSource(tmp_path)


def _write_tsv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tsv_header_root_and_labels(tmp_path: Path) -> None:
    root = write_synthetic_folder(tmp_path / "img", num_identities=3, per_identity=2, size=8)
    rows = ["id0002/0000.png\tbob", "id0000/0001.png\talice", "", "id0001/0000.png\tcarl\textra"]
    with_header = TSVSource(_write_tsv(tmp_path / "a.tsv", ["path\tidentity"] + rows), root)
    without = TSVSource(_write_tsv(tmp_path / "b.tsv", rows), root)
    for source in (with_header, without):
        assert len(source) == 3
        assert source.class_to_idx == {"alice": 0, "bob": 1, "carl": 2}
        assert source.labels.tolist() == [1, 0, 2]
        assert source.describe(0) == str(root / "id0002/0000.png")
    assert open_source(tmp_path / "a.tsv", root=root).to_dict()["kind"] == "tsv"


def test_tsv_errors(tmp_path: Path) -> None:
    root = write_synthetic_folder(tmp_path / "img", num_identities=1, per_identity=1, size=8)
    with pytest.raises(MissingDataError, match="1 of 2 listed files"):
        TSVSource(_write_tsv(tmp_path / "m.tsv", ["id0000/0000.png\ta", "nope.png\tb"]), root)
    with pytest.raises(DatasetError, match=r"bad\.tsv:2"):
        TSVSource(_write_tsv(tmp_path / "bad.tsv", ["id0000/0000.png\ta", "id0000/0000.png"]), root)
    with pytest.raises(DatasetError, match="empty"):
        TSVSource(_write_tsv(tmp_path / "e.tsv", ["path\tidentity"]), root)
    with pytest.raises(MissingDataError):
        TSVSource(tmp_path / "absent.tsv", root)


def test_class_to_idx_override_and_range(tmp_path: Path) -> None:
    root = write_synthetic_folder(tmp_path / "f", num_identities=3, per_identity=1, size=8)
    mapping = {"id0002": 0, "id0000": 5, "id0001": 7, "unused": 9}
    source = ImageFolderSource(root, class_to_idx=mapping)
    assert source.labels.tolist() == [5, 7, 0] and source.num_classes == 10
    assert ImageFolderSource(root, class_to_idx=mapping, num_classes=8).num_classes == 8
    with pytest.raises(DatasetError, match="labels out of range"):
        ImageFolderSource(root, class_to_idx=mapping, num_classes=7)
    with pytest.raises(DatasetError, match="labels out of range"):
        ImageFolderSource(root, num_classes=2)
    with pytest.raises(DatasetError, match="not in the given class_to_idx"):
        ImageFolderSource(root, class_to_idx={"id0000": 0})
    write_class_index(tmp_path / "run" / "classes.json", source.class_to_idx)
    assert read_class_index(tmp_path / "run" / "classes.json") == source.class_to_idx


def test_open_source_dispatch(tmp_path: Path) -> None:
    root = write_synthetic_folder(tmp_path / "f", num_identities=2, per_identity=1, size=8)
    assert isinstance(open_source(root), ImageFolderSource)
    with pytest.raises(MissingDataError):
        open_source(tmp_path / "nothing")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(DatasetError, match="unknown data file"):
        open_source(tmp_path / "x.bin")
    pack_recordio(ImageFolderSource(root), tmp_path / "rec", progress=False)
    assert isinstance(open_source(tmp_path / "rec"), RecordIOSource)
    assert isinstance(open_source(tmp_path / "rec" / "train.rec"), RecordIOSource)


def test_real_celeba_split_and_pack(celeba_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    source = TSVSource(celeba_dir / "splits" / "train.tsv", celeba_dir / "images")
    assert source.num_classes == 200 and len(source) > 4000
    assert source.describe(0).endswith("7201/001085.jpg")
    lines = (celeba_dir / "splits" / "train.tsv").read_text().splitlines()
    few = _write_tsv(tmp_path / "few.tsv", [lines[0], *lines[1:4], *lines[-3:]])
    assert main([str(few), str(tmp_path / "rec"), "--root", str(celeba_dir / "images")]) == 0
    assert "6 images, 2 identities, 0 skipped" in capsys.readouterr().out
    small = TSVSource(few, celeba_dir / "images")
    packed = RecordIOSource(tmp_path / "rec", progress=False)
    assert packed.class_to_idx == small.class_to_idx
    for i in range(len(small)):
        assert packed.read_bytes(i) == small.read_bytes(i)        # JPEG kept byte for byte
        image = packed.load(i)
        assert image.shape == (112, 112, 3) and image.std() > 10
