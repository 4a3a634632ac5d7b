"""The shipped release (``releases/btnet-mobilefacenet-ms1m``) on the shared insightface trunk:
it loads (fingerprint checked), refuses another trunk, and reproduces its card's CelebA 112&14
accuracy on two folds of the test pairs with the thresholds the card's run chose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from btnet_adapters import hub
from btnet_adapters.checkpoints import btnet_from_arcface_torch
from btnet_adapters.evaluate.embeddings import flip_tta
from btnet_adapters.evaluate.readers import read_pair_list
from btnet_adapters.evaluate.runners import BTNetEmbedder, embed_images, load_image
from btnet_adapters.evaluate.verification import pair_distances
from btnet_adapters.reproduce.release import RELEASE_RECORD, read_card_texts
from btnet_adapters.resize import CV2_BILINEAR

RELEASES = Path(__file__).resolve().parents[1] / "releases"
RELEASE = RELEASES / "btnet-mobilefacenet-ms1m"
FOLDS = (0, 1)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((RELEASE / RELEASE_RECORD).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def released(mobilefacenet_weights: Path, record: dict):
    model = btnet_from_arcface_torch(mobilefacenet_weights, "mobilefacenet", resolutions=(), num_features=128, scale=1)
    for r in record["resolutions"]:
        model.load_adapter(str(RELEASE), resolution=r)
    return model.eval()


def test_release_folder_is_adapters_only_with_a_card(record):
    names = sorted(p.relative_to(RELEASE).as_posix() for p in RELEASE.rglob("*") if p.is_file())
    expected = {f"adapters/r{r}/{n}" for r in record["resolutions"]
                for n in (hub.ADAPTER_CONFIG_NAME, hub.ADAPTER_WEIGHTS_NAME)}
    assert set(names) == expected | {hub.CARD_NAME, RELEASE_RECORD}
    card = (RELEASE / hub.CARD_NAME).read_text(encoding="utf-8")
    texts = read_card_texts(RELEASES / "btnet-mobilefacenet-ms1m.card.json")
    assert card.splitlines()[0] == "---" and f"# {texts['title']}" in card
    for section in ("## Intended use", "## Limitations", "## Bias, risks and privacy", "## Training data",
                    "## Evaluation results", "## Licence", "Non-commercial research only", "under-represented"):
        assert section in card
    bt = next(row for row in record["table"] if row["key"] == "phi_bt")
    assert f"{bt['112&14']:.2f}" in card  # the card shows the run's test table


def test_release_loads_onto_the_shared_trunk_only(released, record, mobilefacenet_weights):
    assert hub.trunk_fingerprint(released) == record["trunk_fingerprint"]
    assert sorted(int(r) for r in released.branches) == record["resolutions"]
    other = btnet_from_arcface_torch(mobilefacenet_weights, "mobilefacenet", resolutions=(), num_features=128, scale=1)
    with torch.no_grad():
        next(other.trunk.parameters()).mul_(1.01)
    with pytest.raises(hub.FingerprintMismatchError):
        other.load_adapter(str(RELEASE), resolution=14)


def test_release_reproduces_its_card_at_112_14_on_two_folds(released, record, celeba_dir):
    """The embeddings of the shipped adapters give the card's per-fold accuracies (same thresholds)."""
    pairs = read_pair_list(celeba_dir / "protocols" / "verification_pairs.tsv", celeba_dir / "images")
    assert pairs.folds is not None
    keep = np.isin(pairs.folds, FOLDS)
    first = [p for p, k in zip(pairs.paths1, keep) if k]
    second = [p for p, k in zip(pairs.paths2, keep) if k]
    embedder = BTNetEmbedder(released, "release")
    torch.set_num_threads(2)
    e1 = flip_tta(*embed_images(embedder, first, load_image, degrade_to=112, resize=CV2_BILINEAR, flip=True)[:2])
    raw, flipped, sides = embed_images(embedder, second, load_image, degrade_to=14, resize=CV2_BILINEAR, flip=True)
    assert set(sides) == {14}  # the 14-px images went to the 14-px branch
    dist = pair_distances(e1, flip_tta(raw, flipped))
    same, folds = pairs.issame[keep], pairs.folds[keep]
    recorded = record["verification"]["phi_bt"]["112&14"]
    for f in FOLDS:
        mask = folds == f
        accuracy = np.mean((dist[mask] < recorded["fold_thresholds"][f]) == same[mask])
        assert accuracy == pytest.approx(recorded["fold_accuracies"][f], abs=2 / mask.sum()), f"fold {f}"
