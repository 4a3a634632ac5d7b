"""Model-driven runners: which image is resized, how, to which path; results vs hand computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from btnet_adapters import BTNet
from btnet_adapters.evaluate import (EmbeddingError, ProtocolFileError, evaluate_identification,
                                     evaluate_verification, flip_tta, read_bin,
                                     read_identity_tsv, read_pairs_tsv, write_bin)
from btnet_adapters.evaluate.runners import (BTNetEmbedder, Embedder, UpsamplingEmbedder,
                                             as_embedder, run_identification, run_routing_table,
                                             run_verification, verification_gains)
from btnet_adapters.errors import ConfigError
from btnet_adapters.resize import CV2_BILINEAR, PIL_BICUBIC, resize_array

ORL = Path(__file__).resolve().parents[1] / "btnet_adapters" / "assets" / "orl"


def orl_face(subject: int, index: int) -> np.ndarray:
    """ORL face as 112×112 RGB uint8."""
    from PIL import Image

    grey = np.asarray(Image.open(ORL / f"s{subject}" / f"{index}.pgm"))
    return resize_array(np.repeat(grey[..., None], 3, axis=2), 112, PIL_BICUBIC)


@pytest.fixture(scope="module")
def tiny_model() -> BTNet:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(7, 14, 28),
                           embed_dim=32).eval()


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> dict:
    """10 pairs (5 same, 5 different) as a .bin, PNG files and a TSV list with folds."""
    root = tmp_path_factory.mktemp("faces")
    images, issame, lines = [], [], []
    for i in range(10):
        same = i % 2 == 0
        a, b = (i + 1, 1), ((i + 1, 2) if same else (i + 2, 3))
        images += [orl_face(*a), orl_face(*b)]
        issame.append(same)
        lines.append(f"s{a[0]}_{a[1]}.png\ts{b[0]}_{b[1]}.png\t{int(same)}\t{i % 2}")
    from PIL import Image

    for i in range(len(images)):
        s, k = lines[i // 2].split("\t")[i % 2].removesuffix(".png").split("_")
        Image.fromarray(images[i]).save(root / f"{s}_{k}.png")
    (root / "pairs.tsv").write_text("path1\tpath2\tsame\tfold\n" + "\n".join(lines) + "\n")
    bin_path = write_bin(root / "tiny.bin", images, issame, image_format=".png")
    return {"root": root, "bin": bin_path, "images": images, "issame": np.array(issame)}


class Spy(Embedder):
    """Wraps an embedder and records the side of every batch it embeds (and the batches)."""

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner.name, inner.embed_dim)
        self.inner, self.routes, self.sides, self.batches = inner, inner.routes, [], []

    def target_side(self, width, height, indicator="max", strategy="ceil"):
        return self.inner.target_side(width, height, indicator, strategy)

    def _forward(self, pixels):
        self.sides.append(pixels.shape[1])
        self.batches.append(pixels.copy())
        return self.inner.embed_pixels(pixels)


def raw_embed(model: BTNet, images: list[np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return model(model.normalize(x)).numpy()


def hand_verification(model, images, issame, r1, r2, *, upsample=False, folds=None):
    """Independent computation: resize, (up-sample), flip, sum, evaluate_verification."""
    firsts, seconds = images[0::2], images[1::2]

    def prep(imgs, r):
        out = [resize_array(im, r, CV2_BILINEAR) for im in imgs]
        return [resize_array(im, 112, CV2_BILINEAR) for im in out] if upsample else out

    def emb(imgs):
        return flip_tta(raw_embed(model, imgs),
                        raw_embed(model, [np.ascontiguousarray(im[:, ::-1]) for im in imgs]))

    return evaluate_verification(emb(prep(firsts, r1)), emb(prep(seconds, r2)), issame,
                                 folds=folds)


def test_verification_bin_routes_native_side_and_matches_hand(tiny_model, faces):
    pairs = read_bin(faces["bin"])
    spy = Spy(BTNetEmbedder(tiny_model))
    run = run_verification(spy, pairs, ["112&7", "7&7", "112&14"], batch_size=4, progress=False)
    assert set(spy.sides) == {112, 7, 14}  # the branch of r gets r×r, unresized
    # 112&7 and 7&7 share the 7-px seconds; 112-px firsts embedded once: 10+10 (+flip) + 10 + 10
    assert sum(b.shape[0] for b in spy.batches) == 2 * (10 + 10 + 10 + 10)
    for setting, (r1, r2) in {"112&7": (112, 7), "7&7": (7, 7), "112&14": (112, 14)}.items():
        expect = hand_verification(tiny_model, faces["images"], faces["issame"], r1, r2)
        got = run.results[setting]
        assert got.accuracy == pytest.approx(expect.accuracy)
        np.testing.assert_allclose(got.roc.tpr, expect.roc.tpr)
        np.testing.assert_allclose(got.fold_thresholds, expect.fold_thresholds)
    assert run.paths["112&7"] == (112, 7)
    assert [r["setting"] for r in run.rows] == ["112&7", "7&7", "112&14"]


def test_second_image_resized_with_spec_and_flipped(tiny_model, faces):
    pairs = read_bin(faces["bin"])
    spy = Spy(BTNetEmbedder(tiny_model))
    run_verification(spy, pairs, ["112&14"], batch_size=64, progress=False)
    seconds = [resize_array(im, 14, CV2_BILINEAR) for im in faces["images"][1::2]]
    at14 = [b for b in spy.batches if b.shape[1] == 14]
    np.testing.assert_array_equal(at14[0], np.stack(seconds))
    np.testing.assert_array_equal(at14[1], np.stack(seconds)[:, :, ::-1])  # flip after resize
    firsts = [b for b in spy.batches if b.shape[1] == 112]
    np.testing.assert_array_equal(firsts[0], np.stack(faces["images"][0::2]))


def test_baseline_gets_112_upsampled_and_matches_hand(tiny_model, faces):
    pairs = read_pairs_tsv(faces["root"] / "pairs.tsv", faces["root"])
    spy = Spy(as_embedder(tiny_model, "hr", upsample=True))
    run = run_verification(spy, pairs, ["112&7"], batch_size=8, progress=False)
    assert set(spy.sides) == {112}
    expect = hand_verification(tiny_model, faces["images"], faces["issame"], 112, 7,
                               upsample=True, folds=pairs.folds)
    assert run.results["112&7"].accuracy == pytest.approx(expect.accuracy)
    np.testing.assert_allclose(run.results["112&7"].fold_accuracies, expect.fold_accuracies)
    assert run.results["112&7"].fold_accuracies.size == 2  # the TSV's folds are used


def test_no_flip_and_plain_callable(tiny_model, faces):
    pairs = read_bin(faces["bin"])
    run = run_verification(lambda x: tiny_model(x), pairs, ["112&28"], flip=False,
                           progress=False)
    firsts = raw_embed(tiny_model, faces["images"][0::2])
    seconds = [resize_array(resize_array(im, 28, CV2_BILINEAR), 112, CV2_BILINEAR)
               for im in faces["images"][1::2]]
    expect = evaluate_verification(firsts, raw_embed(tiny_model, seconds), faces["issame"])
    assert run.results["112&28"].accuracy == pytest.approx(expect.accuracy)
    assert run.name == "baseline"


def test_verification_errors(tiny_model, faces, tmp_path):
    pairs = read_bin(faces["bin"])
    with pytest.raises(ConfigError, match="112&7"):
        run_verification(tiny_model, pairs, ["112&seven"], progress=False)
    bad = UpsamplingEmbedder(lambda x: torch.zeros(x.shape[0], 16) + 1, "bad", embed_dim=32)
    with pytest.raises(EmbeddingError, match="16-d embeddings but 32-d"):
        run_verification(bad, pairs, ["112&7"], progress=False)
    (tmp_path / "p.tsv").write_text("a.png\tmissing.png\t1\n")
    with pytest.raises(ProtocolFileError, match="do not exist"):
        read_pairs_tsv(tmp_path / "p.tsv", tmp_path)
    with pytest.raises(ConfigError, match="cannot evaluate"):
        as_embedder(42)


def _lists(tmp_path: Path) -> tuple:
    """6 gallery identities (2 images), mated probes of them, unmated probes of others."""
    from PIL import Image

    gal, mated, unmated = [], [], []
    for s in range(1, 10):
        for k in (1, 2, 3):
            name = f"s{s}_{k}.png"
            Image.fromarray(orl_face(s, k)).save(tmp_path / name)
            if s <= 6:
                (gal if k < 3 else mated).append(f"{name}\ts{s}")
            else:
                unmated.append(name)
    for fname, lines in (("g.tsv", gal), ("m.tsv", mated), ("u.tsv", unmated)):
        (tmp_path / fname).write_text("\n".join(lines) + "\n")
    return tuple(read_identity_tsv(tmp_path / f, tmp_path) for f in ("g.tsv", "m.tsv", "u.tsv"))


def test_identification_routing_and_hand(tiny_model, tmp_path):
    gallery, mated, unmated = _lists(tmp_path)
    spy = Spy(BTNetEmbedder(tiny_model))
    run = run_identification(spy, gallery, mated, unmated, probe_size=10, rank=3,
                             progress=False)
    assert run.routes == {14: len(mated) + len(unmated)}  # max+ceil: 10 px → branch 14
    assert set(spy.sides) == {112, 14}

    def probe(paths):
        from btnet_adapters.evaluate.runners import load_image

        return [resize_array(resize_array(load_image(p), 10, PIL_BICUBIC), 14, PIL_BICUBIC)
                for p in paths]

    expect = evaluate_identification(
        raw_embed(tiny_model, [resize_array(orl_face(int(p.stem[1:].split("_")[0]),
                                                     int(p.stem.split("_")[1])), 112, PIL_BICUBIC)
                               for p in gallery.paths]),
        gallery.identities, raw_embed(tiny_model, probe(mated.paths)), mated.identities,
        raw_embed(tiny_model, probe(unmated.paths)), rank=3, progress=False)
    got = run.result
    assert got.cmc == pytest.approx(expect.cmc)
    for mode in ("reference", "exact"):
        assert got.open_set[mode].auc == pytest.approx(expect.open_set[mode].auc)
    assert [r["mode"] for r in run.rows] == ["reference", "exact"]


def test_routing_table_and_baseline(tiny_model, tmp_path):
    gallery, mated, unmated = _lists(tmp_path)
    spy = Spy(BTNetEmbedder(tiny_model))
    runs = run_routing_table(spy, gallery, mated, unmated, probe_size=20, rank=3,
                             modes=["exact"], progress=False)
    assert len(runs) == 9
    by = {(r.rows[0]["indicator"], r.rows[0]["strategy"]): r.routes for r in runs}
    n = len(mated) + len(unmated)
    assert by[("max", "ceil")] == {28: n} and by[("max", "floor")] == {14: n}
    assert by[("max", "near")] == {14: n}
    # each image embedded at most once per side: gallery once, probes at 14 and 28
    assert sum(b.shape[0] for b in spy.batches) == len(gallery) + 2 * n
    base = run_identification(as_embedder(tiny_model, "hr", upsample=True), gallery, mated,
                              unmated, probe_size=20, rank=3, progress=False)
    assert base.routes == {112: n}
    with pytest.raises(ConfigError, match="needs a BTNet"):
        run_routing_table(as_embedder(tiny_model, "hr", upsample=True), gallery, mated, unmated)
    with pytest.raises(ProtocolFileError, match="identity"):
        run_identification(tiny_model, gallery, unmated, None, progress=False)


def test_gains(tiny_model, faces):
    pairs = read_bin(faces["bin"])
    model = run_verification(tiny_model, pairs, ["112&7", "7&7"], progress=False, name="bt")
    hr = run_verification(as_embedder(tiny_model, "hr", upsample=True), pairs, ["112&7", "7&7"],
                          progress=False)
    rows = verification_gains(model, hr)
    assert [r["setting"] for r in rows] == ["112&7", "7&7"]
    assert rows[0]["gain"] is None
    diff = 100 * (model.results["112&7"].accuracy - hr.results["112&7"].accuracy)
    assert rows[0]["Δ accuracy (points)"] == pytest.approx(diff)


@pytest.mark.slow
def test_celeba_mobilefacenet_upsampling_baseline(celeba_dir, mobilefacenet_weights, capsys):
    """Real MobileFaceNet as the up-sampling baseline on the CelebA protocols (folds 0-1)."""
    import dataclasses

    import timm
    from safetensors.torch import load_file

    torch.set_num_threads(2)
    model = timm.create_model("btnet_mobilefacenet", embed_dim=128, resolutions=[14],
                              backbone_kwargs=dict(num_features=128, scale=1))
    model.trunk.load_state_dict(load_file(str(mobilefacenet_weights)), strict=True)
    model.remove_branch(14)
    model.add_branch(14)
    base = as_embedder(model.eval(), "mobilefacenet", upsample=True)
    proto = celeba_dir / "protocols"
    pairs = read_pairs_tsv(proto / "verification_pairs.tsv", celeba_dir / "images")
    keep = np.flatnonzero(pairs.folds < 2)
    pairs = dataclasses.replace(
        pairs, paths1=tuple(pairs.paths1[i] for i in keep),
        paths2=tuple(pairs.paths2[i] for i in keep), issame=pairs.issame[keep],
        folds=pairs.folds[keep])
    ver = run_verification(base, pairs, ["112&112", "112&28", "112&14", "112&7"],
                           batch_size=128, progress=False)
    acc = {s: 100 * r.accuracy for s, r in ver.results.items()}
    lists = [read_identity_tsv(proto / f"openset_{n}.tsv", celeba_dir / "images")
             for n in ("gallery", "mated_probes", "unmated_probes")]
    ident = run_identification(base, *lists, batch_size=128, progress=False)
    ref, exact = ident.result.open_set["reference"], ident.result.open_set["exact"]
    with capsys.disabled():
        print(f"\nCelebA verification (folds 0-1) {acc}")
        print(f"CelebA open-set reference AUC {100 * ref.auc:.2f} TPIR20 "
              f"{ {f: round(100 * v, 2) for f, v in ref.tpir.items()} }; exact AUC "
              f"{100 * exact.auc:.2f}; CMC {ident.result.cmc}")
    assert acc["112&112"] > 90 and acc["112&112"] > acc["112&28"] > acc["112&7"]
    assert ref.auc > 0.5 and ident.result.cmc[1] > 0.8
