"""Protocol readers: .bin (restricted unpickler), pair lists, identity lists, SurvFace, IJB."""

from __future__ import annotations

import os
import pickle
import struct

import cv2
import numpy as np
import pytest

from btnet_adapters.evaluate import (ProtocolFileError, list_image_folder, parse_bin, read_bin,
                                     read_identity_tsv, read_ijb_meta, read_lfw_pairs, read_pair_list,
                                     read_pairs_tsv, read_survface_identification, write_bin)


def jpeg(seed: int, size: int = 16) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def py2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """A protocol-2 pickle as Python 2 writes it: byte strings as (SHORT_)BINSTRING."""
    out = bytearray(b"\x80\x02]q\x00(")
    for b in images:
        out += (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b))) + b
    out += b"e]q\x01("
    out += b"".join(b"\x88" if s else b"\x89" for s in issame)
    out += b"e\x86q\x02."
    return bytes(out)


def test_bin_round_trip_with_cv2_jpegs(tmp_path):
    images = [jpeg(i) for i in range(6)]
    path = write_bin(tmp_path / "tiny.bin", images, [True, False, True])
    vb = read_bin(path)
    assert len(vb) == 3 and vb.name == "tiny"
    assert vb.images == tuple(images)
    np.testing.assert_array_equal(vb.issame, [True, False, True])
    first, second = vb.decode_pairs()
    want = cv2.imdecode(np.frombuffer(images[3], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(second[1], want)
    assert first[0].shape == (16, 16, 3)
    # insightface's own loader (plain pickle) reads what we write
    bins, issame = pickle.loads(path.read_bytes())
    assert bins == images and issame == [True, False, True]


def test_bin_formats_seen_in_the_wild():
    images = [jpeg(i) for i in range(4)]
    assert parse_bin(py2_pickle(images, [True, False])).images == tuple(images)
    for proto in range(6):  # Python 3 writers, numpy issame, numpy bools, uint8 arrays
        data = pickle.dumps((images, np.array([True, False])), protocol=proto)
        assert parse_bin(data).issame.tolist() == [True, False]
        data = pickle.dumps((images, [np.bool_(False), np.bool_(True)]), protocol=proto)
        assert parse_bin(data).issame.tolist() == [False, True]
        arrays = [np.frombuffer(b, np.uint8) for b in images]
        assert parse_bin(pickle.dumps((arrays, [1, 0]), protocol=proto)).images == tuple(images)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_bin_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([jpeg(0), jpeg(1)], _Exploit(marker))))
    with pytest.raises(ProtocolFileError, match=r"refused to load (posix|os|nt)\.system"):
        read_bin(path)
    assert not marker.exists()
    for payload in (pickle.dumps(eval), pickle.dumps(np.array([object()], dtype=object)),
                    b"cbuiltins\nexec\n(S'print(1)'\ntR."):
        with pytest.raises(ProtocolFileError, match="refused"):
            parse_bin(payload)


def test_bin_that_is_not_the_expected_pickle(tmp_path):
    with pytest.raises(ProtocolFileError, match="not a valid pickle"):
        parse_bin(b"\x89PNG not a pickle at all")
    with pytest.raises(ProtocolFileError, match="expected a pickled"):
        parse_bin(pickle.dumps({"images": []}))
    with pytest.raises(ProtocolFileError, match="need 4 images"):
        parse_bin(pickle.dumps(([jpeg(0)] * 3, [True, False])))
    with pytest.raises(ProtocolFileError, match="issame"):
        parse_bin(pickle.dumps(([jpeg(0)] * 2, [[1, 2]])))
    with pytest.raises(ProtocolFileError, match="not found"):
        read_bin(tmp_path / "missing.bin")
    vb = parse_bin(pickle.dumps(([b"garbage", jpeg(0)], [True])))
    with pytest.raises(ProtocolFileError, match="not a decodable image"):
        vb.decode(0)


def _touch(root, rels):
    for r in rels:
        p = root / r
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg(0))


def test_pairs_tsv_with_and_without_header(tmp_path):
    _touch(tmp_path / "img", ["a/1.jpg", "a/2.jpg", "b/1.jpg"])
    (tmp_path / "p.tsv").write_text("path1\tpath2\tsame\tfold\na/1.jpg\ta/2.jpg\t1\t0\n"
                                    "a/1.jpg\tb/1.jpg\t0\t1\n")
    pairs = read_pairs_tsv(tmp_path / "p.tsv", tmp_path / "img")
    assert pairs.issame.tolist() == [True, False] and pairs.folds.tolist() == [0, 1]
    assert pairs.paths2[1] == tmp_path / "img" / "b/1.jpg"
    assert len(pairs.unique_paths()) == 3
    (tmp_path / "q.txt").write_text("a/1.jpg a/2.jpg 1\na/2.jpg b/1.jpg 0\n")
    pairs = read_pairs_tsv(tmp_path / "q.txt", tmp_path / "img")
    assert pairs.folds is None and pairs.issame.tolist() == [True, False]


def test_pairs_naming_missing_images_list_them(tmp_path):
    _touch(tmp_path, ["ok.jpg"])
    lines = "".join(f"ok.jpg\tgone{i}.jpg\t0\n" for i in range(8))
    (tmp_path / "p.tsv").write_text(lines)
    with pytest.raises(ProtocolFileError) as err:
        read_pairs_tsv(tmp_path / "p.tsv", tmp_path)
    msg = str(err.value)
    assert "8 of the images" in msg and "gone0.jpg" in msg and "gone4.jpg" in msg
    assert "gone5.jpg" not in msg and "3 more" in msg
    (tmp_path / "bad.tsv").write_text("ok.jpg\tok.jpg\tmaybe\n")
    with pytest.raises(ProtocolFileError, match=":1: 'same'"):
        read_pairs_tsv(tmp_path / "bad.tsv", tmp_path)


def test_lfw_pairs_txt(tmp_path):
    root = tmp_path / "lfw"
    _touch(root, ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", "Bob/Bob_0003.jpg"])
    (tmp_path / "pairs.txt").write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t3\nAnn\t2\t1\n"
                                        "Bob\t3\tAnn\t2\n")
    pairs = read_lfw_pairs(tmp_path / "pairs.txt", root)
    assert pairs.issame.tolist() == [True, False, True, False]
    assert pairs.folds.tolist() == [0, 0, 1, 1]
    assert pairs.paths2[1] == root / "Bob" / "Bob_0003.jpg"
    (tmp_path / "short.txt").write_text("10\t300\nAnn\t1\t2\n")
    with pytest.raises(ProtocolFileError, match="announces"):
        read_lfw_pairs(tmp_path / "short.txt", root)


def test_pair_lists_are_told_apart_by_content(tmp_path):
    _touch(tmp_path / "lfw", ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg"])
    (tmp_path / "lfw" / "view1.txt").write_text("1\nAnn\t1\t2\nAnn\t2\tAnn\t1\n")
    (tmp_path / "lfw" / "list.tsv").write_text("path1 path2 same\nAnn/Ann_0001.jpg Ann/Ann_0002.jpg 1\n")
    lfw = read_pair_list(tmp_path / "lfw" / "view1.txt")  # images default to the list's folder
    assert lfw.issame.tolist() == [True, False] and lfw.paths1[0] == tmp_path / "lfw" / "Ann" / "Ann_0001.jpg"
    tsv = read_pair_list(tmp_path / "lfw" / "list.tsv")
    assert tsv.issame.tolist() == [True] and tsv.folds is None
    assert read_pair_list(tmp_path / "lfw" / "view1.txt", fmt="lfw").issame.tolist() == [True, False]
    with pytest.raises(ProtocolFileError, match="expected 'path1 path2 same"):
        read_pair_list(tmp_path / "lfw" / "view1.txt", fmt="tsv")
    with pytest.raises(ProtocolFileError, match="accepted: auto, tsv, lfw"):
        read_pair_list(tmp_path / "lfw" / "view1.txt", fmt="csv")


def test_identity_lists_and_folders(tmp_path):
    _touch(tmp_path, ["x/1.jpg", "y/2.png", "u/3.jpg", "u/4.jpg"])
    (tmp_path / "g.tsv").write_text("path\tidentity\nx/1.jpg\tX\ny/2.png\tY\n")
    g = read_identity_tsv(tmp_path / "g.tsv", tmp_path)
    assert g.identities.tolist() == ["X", "Y"]
    (tmp_path / "u.tsv").write_text("u/3.jpg\nu/4.jpg\n")
    assert read_identity_tsv(tmp_path / "u.tsv", tmp_path).identities is None
    (tmp_path / "mixed.tsv").write_text("u/3.jpg\nu/4.jpg\tZ\n")
    with pytest.raises(ProtocolFileError, match="every line"):
        read_identity_tsv(tmp_path / "mixed.tsv", tmp_path)
    assert [p.name for p in list_image_folder(tmp_path / "u").paths] == ["3.jpg", "4.jpg"]


def test_survface_mat_layout(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "QMUL-SurvFace" / "Face_Identification_Test_Set"
    _touch(base, ["gallery/1_cam1_1.jpg", "gallery/2_cam2_1.jpg", "mated_probe/1_cam3_9.jpg",
                  "unmated_probe/b.jpg", "unmated_probe/a.jpg"])
    cells = np.empty((2, 1), dtype=object)
    cells[0, 0], cells[1, 0] = "1_cam1_1.jpg", "2_cam2_1.jpg"
    savemat(base / "gallery_img_ID_pairs.mat",
            {"gallery_set": cells, "gallery_ids": np.array([[1], [2]], np.uint16)})
    one = np.empty((1, 1), dtype=object)
    one[0, 0] = "1_cam3_9.jpg"
    savemat(base / "mated_probe_img_ID_pairs.mat",
            {"mated_probe_set": one, "mated_probe_ids": np.array([[1]], np.uint16)})
    gallery, mated, unmated = read_survface_identification(tmp_path / "QMUL-SurvFace")
    assert gallery.identities.tolist() == ["1", "2"]
    assert gallery.paths[1] == base / "gallery" / "2_cam2_1.jpg"
    assert mated.identities.tolist() == ["1"]
    assert [p.name for p in unmated.paths] == ["a.jpg", "b.jpg"] and unmated.identities is None
    savemat(base / "mated_probe_img_ID_pairs.mat", {"wrong_key": one})
    with pytest.raises(ProtocolFileError, match="missing"):
        read_survface_identification(base)


def test_ijb_meta(tmp_path):
    meta = tmp_path / "IJBC" / "meta"
    meta.mkdir(parents=True)
    (meta / "ijbc_face_tid_mid.txt").write_text("1.jpg 1 69544\n2.jpg 1 69544\n3.jpg 5 70000\n")
    lm = " ".join(f"{v:.3f}" for v in np.arange(10) + 40.0)
    (meta / "ijbc_name_5pts_score.txt").write_text(
        f"1.jpg {lm} 0.999\n2.jpg {lm} 0.5\n3.jpg {lm} 0.1\n")
    (meta / "ijbc_template_pair_label.txt").write_text("1 5 0\n1 1 1\n")
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    (meta / "ijbc_1N_gallery_G1.csv").write_text(header + "1,11,img/1.jpg\n1,11,img/2.jpg\n")
    (meta / "ijbc_1N_probe_mixed.csv").write_text(header + "5,11,img/3.jpg\n")
    m = read_ijb_meta(tmp_path / "IJBC")
    assert m.templates.tolist() == [1, 1, 5] and m.medias.tolist() == [69544, 69544, 70000]
    assert m.landmarks.shape == (3, 5, 2) and m.landmarks[0, 1, 0] == pytest.approx(42.0)
    np.testing.assert_allclose(m.face_scores, [0.999, 0.5, 0.1], rtol=1e-6)
    assert [a.tolist() for a in m.pairs] == [[1, 1], [5, 1], [0, 1]]
    assert list(m.galleries) == ["G1"] and m.galleries["G1"][1].tolist() == [11, 11]
    assert m.probes[0].tolist() == [5] and m.image_dir == tmp_path / "IJBC" / "loose_crop"
    (meta / "ijbc_template_pair_label.txt").write_text("1 5\n")
    with pytest.raises(ProtocolFileError, match="template_pair_label"):
        read_ijb_meta(tmp_path / "IJBC")
    (meta / "ijbc_name_5pts_score.txt").write_text(f"9.jpg {lm} 0.9\n")
    with pytest.raises(ProtocolFileError, match="different images"):
        read_ijb_meta(tmp_path / "IJBC")


def test_real_celeba_protocol_files(celeba_dir):
    images = celeba_dir / "images"
    pairs = read_pairs_tsv(celeba_dir / "protocols" / "verification_pairs.tsv", images)
    assert len(pairs) == 6000 and pairs.issame.sum() == 3000
    assert np.bincount(pairs.folds).tolist() == [600] * 10
    gallery = read_identity_tsv(celeba_dir / "protocols" / "openset_gallery.tsv", images)
    mated = read_identity_tsv(celeba_dir / "protocols" / "openset_mated_probes.tsv", images)
    unmated = read_identity_tsv(celeba_dir / "protocols" / "openset_unmated_probes.tsv", images)
    assert (len(gallery), len(mated), len(unmated)) == (137, 1317, 540)
    assert set(mated.identities) <= set(gallery.identities)
    assert not set(unmated.identities) & set(gallery.identities)
