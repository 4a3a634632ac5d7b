"""The metrics on real data: the CelebA protocols embedded by the real MobileFaceNet.

A subset keeps this CPU-only test near a minute: verification folds 0-1 (1,200 pairs) at
112&112 and 112&14 (second image down-sampled with one-step OpenCV bilinear without
antialiasing, then up-sampled back the same way, as the reference's baselines), and the
open-set protocol with every third probe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from btnet_adapters.evaluate import (decode_image, evaluate_identification,
                                     evaluate_verification, flip_tta, read_identity_tsv,
                                     read_pairs_tsv)
from btnet_adapters.resize import CV2_BILINEAR, resize_array

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embed(mobilefacenet_weights):
    import timm
    from safetensors.torch import load_file

    import btnet_adapters  # noqa: F401 - registers mobilefacenet

    model = timm.create_model("mobilefacenet", num_features=128, scale=1)
    model.load_state_dict(load_file(str(mobilefacenet_weights)), strict=True)
    model.eval()

    def run(images: list[np.ndarray]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), 64):
                x = torch.from_numpy(np.stack(images[s:s + 64])).permute(0, 3, 1, 2).float()
                out.append(model((x - 127.5) / 128.0).numpy())
        return np.concatenate(out)

    return run


def _load(paths) -> list[np.ndarray]:
    return [decode_image(Path(p).read_bytes(), str(p)) for p in paths]


def _flip_embed(embed, images):
    return flip_tta(embed(images), embed([np.ascontiguousarray(i[:, ::-1]) for i in images]))


def test_celeba_verification_and_identification(celeba_dir, embed):
    torch.set_num_threads(1)
    images = celeba_dir / "images"
    pairs = read_pairs_tsv(celeba_dir / "protocols" / "verification_pairs.tsv", images)
    keep = np.flatnonzero(pairs.folds < 2)
    p1 = [pairs.paths1[i] for i in keep]
    p2 = [pairs.paths2[i] for i in keep]
    uniq = list(dict.fromkeys(p1 + p2))
    full = dict(zip(uniq, _flip_embed(embed, _load(uniq))))
    e1 = np.stack([full[p] for p in p1])
    results = {"112&112": evaluate_verification(e1, np.stack([full[p] for p in p2]),
                                                pairs.issame[keep], folds=pairs.folds[keep])}
    seconds = list(dict.fromkeys(p2))
    low = [resize_array(resize_array(im, 14, CV2_BILINEAR), 112, CV2_BILINEAR)
           for im in _load(seconds)]
    low_emb = dict(zip(seconds, _flip_embed(embed, low)))
    results["112&14"] = evaluate_verification(e1, np.stack([low_emb[p] for p in p2]),
                                              pairs.issame[keep], folds=pairs.folds[keep])
    for name, r in results.items():
        print(f"{name}: accuracy {100 * r.accuracy:.2f} ± {100 * r.accuracy_std:.2f}, "
              f"TAR@FAR=1e-2 {100 * r.tar_at_far[1e-2]:.2f}")
    assert results["112&112"].accuracy > 0.9
    assert results["112&14"].accuracy < results["112&112"].accuracy

    proto = celeba_dir / "protocols"
    gallery = read_identity_tsv(proto / "openset_gallery.tsv", images)
    mated = read_identity_tsv(proto / "openset_mated_probes.tsv", images)
    unmated = read_identity_tsv(proto / "openset_unmated_probes.tsv", images)
    ident = evaluate_identification(
        embed(_load(gallery.paths)), gallery.identities,
        embed(_load(mated.paths[::3])), mated.identities[::3],
        embed(_load(unmated.paths[::3])), rank=20, progress=False)
    for mode, o in ident.open_set.items():
        print(f"{mode}: AUC {100 * o.auc:.2f} TPIR20@FPIR "
              + ", ".join(f"{f:g}: {100 * v:.2f}" for f, v in o.tpir.items()))
    print("CMC", {r: round(100 * v, 2) for r, v in ident.cmc.items()})
    assert ident.cmc[1] > 0.8 and ident.cmc[20] >= ident.cmc[1]
    ref, ex = ident.open_set["reference"], ident.open_set["exact"]
    assert abs(ref.auc - ex.auc) < 0.02
    assert all(abs(ref.tpir[f] - ex.tpir[f]) < 0.05 for f in ref.tpir)
