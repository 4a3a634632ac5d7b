"""IJB runner and ``btnet eval ijb`` on a synthetic IJB-C folder built from ORL faces.

Each ORL face is pasted at a known size ``S`` and offset into a black canvas, and its 5
landmarks are the ArcFace template mapped into that square, so the face size (``S``), the
routing (ceil on 7/14/28/112) and the alignment are known exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from btnet_adapters import BTNet, cli
from btnet_adapters.errors import ConfigError
from btnet_adapters.evaluate import (ProtocolFileError, align_face, arcface_template,
                                     ijb_identification, read_ijb_meta, similarity_transform)
from btnet_adapters.evaluate.ijb_runner import (embed_ijb, face_sizes, galleries, run_ijb,
                                                score_ijb, validate_ijb_meta)
from btnet_adapters.resize import CV2_BILINEAR, resize_array

from .test_evaluate_ijb import reference_templates
from .test_evaluate_runners import orl_face

SUBJECTS = range(1, 7)
#: face sides cycled over the images, and where ceil routing on (7, 14, 28, 112) sends them
SIZES = (112, 40, 24, 12, 7)
CEIL = {112: 112, 40: 112, 24: 28, 12: 14, 7: 7}
#: image k of a subject: (template kind, media index); gallery = 1-3, probe = 4-5
LAYOUT = {1: ("gallery", 1), 2: ("gallery", 1), 3: ("gallery", 3), 4: ("probe", 4),
          5: ("probe", 5)}


def face_in_canvas(subject: int, k: int, side: int, offset: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """An ORL face resized to ``side`` px at ``offset`` in a black canvas, and its landmarks."""
    face = orl_face(subject, k)
    if side != 112:
        face = resize_array(face, side, CV2_BILINEAR)
    ox, oy = offset
    canvas = np.zeros((side + oy + 23, side + ox + 31, 3), np.uint8)
    canvas[oy:oy + side, ox:ox + side] = face
    return canvas, (arcface_template(112) + 0.5) * side / 112 - 0.5 + np.array([ox, oy])


def build_ijb(root: Path) -> dict:
    """Write ``root/meta`` and ``root/loose_crop`` (IJB-C layout); return the ground truth."""
    from PIL import Image

    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    rng = np.random.default_rng(0)
    tid_mid, pts, sizes, g_rows, p_rows = [], [], [], [], []
    for s in SUBJECTS:
        for k, (kind, media) in LAYOUT.items():
            side = SIZES[len(sizes) % len(SIZES)]
            name = f"{s}_{k}.png"
            canvas, lm = face_in_canvas(s, k, side, (10 + 3 * s, 5 + k))
            Image.fromarray(canvas).save(root / "loose_crop" / name)
            tid = (100 if kind == "gallery" else 200) + s
            tid_mid.append(f"{name} {tid} {1000 * s + media}")
            score = rng.uniform(0.5, 1.0)
            pts.append(" ".join([name, *(f"{v:.6f}" for v in lm.ravel()), f"{score:.6f}"]))
            (g_rows if kind == "gallery" else p_rows).append(f"{tid},{s},{name}")
            sizes.append(side)
    pairs = [f"{100 + a} {200 + b} {int(a == b)}" for a in SUBJECTS for b in SUBJECTS]
    head = "TEMPLATE_ID,SUBJECT_ID,FILENAME"
    files = {"ijbc_face_tid_mid.txt": tid_mid, "ijbc_name_5pts_score.txt": pts,
             "ijbc_template_pair_label.txt": pairs,
             "ijbc_1N_gallery_G1.csv": [head] + [r for r in g_rows if int(r.split(",")[1]) <= 3],
             "ijbc_1N_gallery_G2.csv": [head] + [r for r in g_rows if int(r.split(",")[1]) > 3],
             "ijbc_1N_probe_mixed.csv": [head] + p_rows}
    for fname, lines in files.items():
        (root / "meta" / fname).write_text("\n".join(lines) + "\n")
    return {"sizes": np.array(sizes)}


@pytest.fixture(scope="module")
def ijb(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    return root, build_ijb(root)


@pytest.fixture(scope="module")
def model() -> BTNet:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(7, 14, 28),
                           embed_dim=32).eval()


@pytest.fixture(scope="module")
def baseline() -> torch.nn.Module:
    """A cheap 112-px model, sensitive to mirroring and resampling."""
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 14 * 14, 16)).eval()


@pytest.fixture(scope="module")
def routed(model, baseline, ijb):
    """The protocol embedded with routing, plus an up-sampling baseline."""
    meta = read_ijb_meta(ijb[0], "IJBC")
    return meta, embed_ijb(model, meta, baselines={"hr": baseline}, batch_size=4, workers=2,
                           progress=False)


@torch.inference_mode()
def raw_embedding(model, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``model(first) + model(mirror(second))`` on uint8 HWC crops (a BTNet: sides pick paths)."""
    def run(img: np.ndarray) -> torch.Tensor:  # BTNet's normalisation: mean = std = 0.5
        return model((torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5)

    return (run(first) + run(np.ascontiguousarray(second[:, ::-1]))).numpy()[0]


def images(meta):
    from PIL import Image

    for name, lm in zip(meta.image_names, meta.landmarks):
        yield np.asarray(Image.open(meta.image_dir / name).convert("RGB")), lm


# --------------------------------------------------------------------------- face size
def test_face_sizes_match_similarity_transform_and_placement(ijb):
    rng = np.random.default_rng(1)
    lms = rng.uniform(0, 300, (40, 5, 2))
    lms[0] = arcface_template(112) * [1, 0] + [0, 5]  # collinear points
    want = [112 / np.sqrt(abs(np.linalg.det(similarity_transform(lm, arcface_template(112))
                                            [:, :2]))) for lm in lms]
    np.testing.assert_allclose(face_sizes(lms), want, rtol=1e-9)
    meta = read_ijb_meta(ijb[0])
    np.testing.assert_allclose(face_sizes(meta.landmarks), ijb[1]["sizes"], rtol=1e-5)
    assert np.isinf(face_sizes(np.ones((5, 2))))[0] and np.isnan(face_sizes(np.full((5, 2),
                                                                                     np.nan)))[0]


def test_alignment_of_a_full_size_face_is_exact(ijb):
    meta = read_ijb_meta(ijb[0])
    for (img, lm), s, name in zip(images(meta), ijb[1]["sizes"], meta.image_names):
        if s == 112:
            subject, k = map(int, name[:-4].split("_"))
            np.testing.assert_array_equal(align_face(img, lm, 112), orl_face(subject, k))


# --------------------------------------------------------------------------- routing + features
def test_routing_sends_small_faces_to_branches(routed, ijb):
    meta, emb = routed
    sizes = ijb[1]["sizes"]
    np.testing.assert_allclose(emb.face_sizes, sizes, rtol=1e-5)
    np.testing.assert_array_equal(emb.sides, [CEIL[s] for s in sizes])
    counts = {r: int(sum(CEIL[s] == r for s in sizes)) for r in (7, 14, 28, 112)}
    assert emb.paths["btnet"] == {
        f"{r}px": n for r, n in counts.items() if n}
    assert emb.paths["hr"] == {(f"{r}px" if r == 112 else f"{r}→112px"): n
                               for r, n in counts.items() if n}
    assert list(emb.raw) == ["btnet", "hr"]
    assert emb.raw["btnet"].shape == (len(sizes), 32) and emb.raw["btnet"].dtype == np.float32
    assert emb.raw["hr"].shape == (len(sizes), 16)


def test_max_side_downscales_faces_before_routing(model, ijb):
    meta = read_ijb_meta(ijb[0])
    emb = embed_ijb(model, meta, max_side=14, strategy="ceil", flip=False, progress=False)
    assert emb.face_sizes.max() <= 14.5
    np.testing.assert_array_equal(emb.sides, [7 if s == 7 else 14 for s in ijb[1]["sizes"]])
    assert set(emb.paths["btnet"]) == {"7px", "14px"}
    assert emb.settings["max_side"] == 14 and emb.settings["flip"] is False


def test_template_features_equal_hand_computation(model, baseline, routed):
    meta, emb = routed
    hand = {"btnet": [], "hr": []}
    for img, lm in images(meta):
        r = CEIL[int(round(face_sizes(lm)[0]))]
        crop = align_face(img, lm, r)
        hand["btnet"].append(raw_embedding(model, crop, crop))
        up = resize_array(crop, 112, CV2_BILINEAR) if r != 112 else crop
        hand["hr"].append(raw_embedding(baseline, up, up))
    t1, t2, _ = meta.pairs
    for name, rows in hand.items():
        raw = np.stack(rows)
        np.testing.assert_allclose(emb.raw[name], raw, rtol=1e-4, atol=1e-4)
        unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        for kw, feats in (({}, unit * meta.face_scores[:, None]),
                          ({"score_weight": False}, unit),
                          ({"normalize": False}, raw * meta.face_scores[:, None])):
            got = score_ijb(emb.raw[name], meta, name=name, progress=False, **kw)
            ids, want = reference_templates(feats, meta.templates, meta.medias)
            np.testing.assert_array_equal(got.template_ids, ids)
            np.testing.assert_allclose(got.template_feats, want, rtol=1e-4, atol=1e-5)
            pos = {t: i for i, t in enumerate(ids)}
            cos = [want[pos[a]] @ want[pos[b]] for a, b in zip(t1, t2)]
            np.testing.assert_allclose(got.pair_scores, cos, rtol=1e-4, atol=1e-5)
            assert (got.verification.n_genuine, got.verification.n_impostor) == (6, 30)


def test_identification_per_gallery_and_union(routed):
    meta, emb = routed
    res = score_ijb(emb.raw["btnet"], meta, progress=False)
    assert list(res.identification) == ["G1+G2", "G1", "G2"]
    union, g1 = res.identification["G1+G2"], res.identification["G1"]
    assert union.nist_fpir is None and (union.n_mated, union.n_unmated) == (6, 0)
    assert g1.nist_fpir is not None and (g1.n_mated, g1.n_unmated) == (3, 3)
    row = {t: i for i, t in enumerate(res.template_ids)}
    probes = res.template_feats[[row[200 + s] for s in SUBJECTS]]
    gallery = res.template_feats[[row[100 + s] for s in (1, 2, 3)]]
    want = ijb_identification(probes, list(SUBJECTS), gallery, [1, 2, 3], progress=False)
    assert g1.cmc == want.cmc and g1.pseudo_fpir == want.pseudo_fpir
    assert g1.nist_fpir.tpir == want.nist_fpir.tpir


def test_fuse_flip_r7_matches_reference_recipe(model, baseline, ijb):
    meta = read_ijb_meta(ijb[0])
    emb = embed_ijb(model, meta, baselines={"hr": baseline}, fuse_flip_side=7, batch_size=8,
                    progress=False)
    n = len(meta.image_names)
    assert emb.paths == {"btnet": {"112px + mirrored 7px": n},
                         "hr": {"112px + mirrored 7→112px": n}}
    for i, (img, lm) in enumerate(images(meta)):
        if i % 3:
            continue
        crop = align_face(img, lm, 112)
        low = resize_array(crop, 7, CV2_BILINEAR)
        np.testing.assert_allclose(emb.raw["btnet"][i], raw_embedding(model, crop, low),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(emb.raw["hr"][i], raw_embedding(
            baseline, crop, resize_array(low, 112, CV2_BILINEAR)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="5-px branch"):
        embed_ijb(model, meta, fuse_flip_side=5, progress=False)
    with pytest.raises(ConfigError, match="needs a BTNet"):
        embed_ijb(lambda x: x.mean((2, 3)), meta, fuse_flip_side=7, progress=False)


# --------------------------------------------------------------------------- CLI
def test_cli_writes_tables_and_roc(ijb, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "out"
    rc = cli.main(["eval", "ijb", "--model", "bt=btnet_resnet18", "--ijb", str(ijb[0]),
                   "--target", "IJBC", "--baseline", "hr=btnet_resnet18", "--max-side", "14",
                   "--out", str(out), "--quiet", "--batch-size", "16"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "TPIR@pseudo_fpir=0.01 (%)" in text and "TPIR1@nist_fpir=0.01 (%)" in text
    for f in ("ijbc_verification.md", "ijbc_verification.json", "ijbc_identification.md",
              "ijbc_identification.json", "ijbc_roc.png"):
        assert (out / f).stat().st_size > 0, f
    ver = json.loads((out / "ijbc_verification.json").read_text())
    assert ver["meta"]["max_side"] == 14 and ver["meta"]["resize"] == str(CV2_BILINEAR)
    rows = {r["model"]: r for r in ver["rows"]}
    assert set(rows) == {"bt", "hr"} and rows["bt"]["pairs"] == 36
    assert "112px" not in rows["bt"]["paths"] and "14→112px" in rows["hr"]["paths"]
    assert all(0 <= rows["bt"][f"TAR@FAR={f:g} (%)"] <= 100 for f in (1e-6, 1e-1))
    ident = json.loads((out / "ijbc_identification.json").read_text())["rows"]
    assert {(r["model"], r["gallery"]) for r in ident} == {
        (m, g) for m in ("bt", "hr") for g in ("G1+G2", "G1", "G2")}


def test_cli_reports_bad_options_and_protocols(ijb, tmp_path, capsys):
    base = ["eval", "ijb", "--model", "btnet_resnet18", "--out", str(tmp_path), "--quiet"]
    assert cli.main(base + ["--ijb", str(ijb[0]), "--fuse-flip-r7", "--no-flip"]) == 2
    assert "replaces flip" in capsys.readouterr().err
    assert cli.main(base + ["--ijb", str(tmp_path / "nowhere")]) == 2
    assert "protocol file not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- malformed meta
def edited(src: Path, dst: Path, fname: str, edit) -> Path:
    """A copy of the IJB folder with one meta file's lines changed by ``edit``."""
    shutil.copytree(src, dst)
    path = dst / "meta" / fname
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    return dst


@pytest.mark.parametrize("fname, edit, message", [
    ("ijbc_template_pair_label.txt", lambda ls: ls + ["101 999 0"],
     r"template_pair_label.txt names 1 templates that have no image .*\[999\]"),
    ("ijbc_1N_gallery_G2.csv", lambda ls: ls + ["777,9,x.png"],
     r"gallery G2 names 1 templates that have no image .*\[777\]"),
    ("ijbc_1N_gallery_G1.csv", lambda ls: [ls[0]] + [r.replace(",2,", ",1,") for r in ls[1:]],
     r"gallery G1 has several templates for subjects \[1\]"),
    ("ijbc_name_5pts_score.txt", lambda ls: [ls[0].replace("1_1.png", "1_9.png")] + ls[1:],
     "list different images"),
    ("ijbc_name_5pts_score.txt",
     lambda ls: [" ".join([ls[0].split()[0]] + ["3.0"] * 10 + ["0.9"])] + ls[1:],
     r"unusable landmarks .*1_1.png"),
    ("ijbc_name_5pts_score.txt", lambda ls: [ls[0].rsplit(" ", 1)[0] + " -1"] + ls[1:],
     r"detector scores must be finite and >= 0"),
])
def test_malformed_meta_gives_clear_errors(ijb, tmp_path, fname, edit, message):
    root = edited(ijb[0], tmp_path / "IJBC", fname, edit)
    with pytest.raises(ProtocolFileError, match=message):
        validate_ijb_meta(read_ijb_meta(root))


def test_missing_corrupt_and_unreferenced_inputs(model, ijb, tmp_path):
    root = tmp_path / "IJBC"
    shutil.copytree(ijb[0], root)
    (root / "loose_crop" / "3_2.png").unlink()
    with pytest.raises(ProtocolFileError, match=r"(?s)1 of the IJBC images do not exist:.*3_2.png"):
        run_ijb(model, root, progress=False)
    (root / "loose_crop" / "3_2.png").write_bytes(b"not an image")
    with pytest.raises(ProtocolFileError, match=r"3_2.png.*not a decodable image"):
        run_ijb(model, root, progress=False)
    with pytest.raises(ProtocolFileError, match="image folder not found"):
        run_ijb(model, root, image_dir=str(tmp_path / "elsewhere"), progress=False)
    for f in ("ijbc_template_pair_label.txt", "ijbc_1N_probe_mixed.csv"):
        (root / "meta" / f).unlink()
    meta = read_ijb_meta(root)
    assert galleries(meta) == {}
    with pytest.raises(ProtocolFileError, match="nothing to evaluate"):
        validate_ijb_meta(meta)
