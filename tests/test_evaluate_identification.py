"""1:N open-set identification and CMC against brute-force loops and hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc as sk_auc

from btnet_adapters.evaluate import (EmbeddingError, ProbeScores, build_gallery, cmc,
                                     evaluate_identification, open_set_identification,
                                     score_probes)
from btnet_adapters.errors import ConfigError


def brute_rank(row: np.ndarray, mate: int) -> int:
    """Rank with ties counted against the probe: how many identities score >= the mate."""
    return sum(1 for v in row if v >= row[mate])


def brute_tpir(mated_rows, mates, k, t):
    hits = 0
    for row, m in zip(mated_rows, mates):
        if brute_rank(row, m) <= k and row[m] > t:
            hits += 1
    return hits / len(mates)


def brute_fpir(unmated_rows, t):
    return sum(1 for row in unmated_rows if max(row) > t) / len(unmated_rows)


def reference_survface(mated_rows, mates, unmated_rows, k, fpirs):
    """The SurvFace script's loop: 1000 linspace thresholds, closest FPIR, sklearn AUC."""
    topk_min = min(sorted(row, reverse=True)[k - 1] for row in mated_rows)
    u_best = [max(row) for row in unmated_rows]
    grid = np.linspace(min(topk_min, min(u_best)), max(u_best), 1000)
    tpir = [brute_tpir(mated_rows, mates, k, t) for t in grid]
    fpir = [brute_fpir(unmated_rows, t) for t in grid]
    picks = {}
    for f in fpirs:
        gaps = [abs(x - f) for x in fpir]
        picks[f] = tpir[gaps.index(min(gaps))]
    return picks, sk_auc(fpir, tpir)


def exact_brute(mated_rows, mates, unmated_rows, k, fpirs):
    """Max TPIR over every threshold whose FPIR <= f; AUC of that step function on [0, 1]."""
    values = sorted({v for row in list(mated_rows) + list(unmated_rows) for v in row})
    candidates = [-np.inf] + values
    points = [(brute_fpir(unmated_rows, t), brute_tpir(mated_rows, mates, k, t))
              for t in candidates]
    out = {f: max(tp for fp, tp in points if fp <= f + 1e-12) for f in fpirs}
    # integrate g(x) = max{TPIR : FPIR <= x} over [0, 1] on a fine midpoint grid of the
    # breakpoints (all breakpoints are multiples of 1/U)
    u = len(unmated_rows)
    area = sum(max(tp for fp, tp in points if fp <= (j + 0.5) / u) for j in range(u)) / u
    return out, area


def random_tied_case(seed, n_mated=40, n_unmated=30, g=12):
    rng = np.random.default_rng(seed)
    mated = np.round(rng.uniform(-1, 1, (n_mated, g)), 1)  # coarse grid: many ties
    mates = rng.integers(0, g, n_mated)
    mated[np.arange(n_mated), mates] += np.round(rng.uniform(0, 0.6, n_mated), 1)
    unmated = np.round(rng.uniform(-1, 1, (n_unmated, g)), 1)
    return mated, mates, unmated


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 20])
def test_open_set_modes_match_brute_force_with_ties(seed, k):
    mated, mates, unmated = random_tied_case(seed)
    fpirs = (0.3, 0.2, 0.1, 0.01, 0.0, 1.0)
    ms = ProbeScores.from_matrix(mated, mates, k=k)
    us = ProbeScores.from_matrix(unmated, np.full(len(unmated), -1), k=k)
    keff = min(k, mated.shape[1])
    ref = open_set_identification(ms, us, fpirs=fpirs, mode="reference")
    want, want_auc = reference_survface(mated, mates, unmated, keff, fpirs)
    assert ref.tpir == pytest.approx(want, abs=1e-12)
    assert ref.auc == pytest.approx(want_auc, abs=1e-12)
    ex = open_set_identification(ms, us, fpirs=fpirs, mode="exact")
    want, want_auc = exact_brute(mated, mates, unmated, keff, fpirs)
    assert ex.tpir == pytest.approx(want, abs=1e-12)
    assert ex.auc == pytest.approx(want_auc, abs=1e-12)
    for f in fpirs:
        assert ex.fpir_reached[f] <= f + 1e-12


def test_probe_summary_matches_brute_force_with_ties():
    mated, mates, _ = random_tied_case(5)
    s = ProbeScores.from_matrix(mated, mates, k=4)
    for i, (row, m) in enumerate(zip(mated, mates)):
        assert s.rank[i] == brute_rank(row, m)
        assert s.mate[i] == row[m]
        assert s.best[i] == max(row)
        assert s.best_nonmate[i] == max(v for j, v in enumerate(row) if j != m)
        assert s.kth[i] == sorted(row, reverse=True)[3]
    for r, v in cmc(s, (1, 2, 5)).items():
        want = np.mean([brute_rank(row, m) <= r for row, m in zip(mated, mates)])
        assert v == pytest.approx(want)


def test_hand_worked_open_set():
    # Gallery of 2 identities. Mated probes (true identity first column after reorder):
    #   p0: true 0.9, other 0.1 -> rank 1
    #   p1: true 0.5, other 0.6 -> rank 2
    #   p2: true 0.3, other 0.3 -> rank 2 (tie counts against the probe)
    # Unmated probes' best scores: 0.8, 0.4, 0.2, 0.1
    mated = np.array([[0.9, 0.1], [0.6, 0.5], [0.3, 0.3]])
    mates = np.array([0, 1, 0])
    unmated = np.array([[0.8, 0.0], [0.1, 0.4], [0.2, 0.2], [0.1, 0.05]])
    ms = ProbeScores.from_matrix(mated, mates, k=1)
    us = ProbeScores.from_matrix(unmated, [-1] * 4, k=1)
    np.testing.assert_array_equal(ms.rank, [1, 2, 2])
    assert cmc(ms, (1, 2)) == {1: pytest.approx(1 / 3), 2: 1.0}
    # exact, rank 1: only p0 can count (score 0.9).
    #   FPIR <= 0.25 allows 1 false alarm -> threshold = 2nd highest unmated = 0.4; 0.9 > 0.4
    #   FPIR <= 0.2 allows 0 -> threshold 0.8; 0.9 > 0.8 -> TPIR 1/3 either way.
    ex = open_set_identification(ms, us, fpirs=(0.25, 0.2), mode="exact")
    assert ex.tpir == {0.25: pytest.approx(1 / 3), 0.2: pytest.approx(1 / 3)}
    assert ex.thresholds == {0.25: 0.4, 0.2: 0.8}
    assert ex.fpir_reached == {0.25: 0.25, 0.2: 0.0}
    # AUC: TPIR is 1/3 at every unmated threshold (0.8, 0.4, 0.2, 0.1) -> 1/3
    assert ex.auc == pytest.approx(1 / 3)
    # rank 2: p1 (0.5) and p2 (0.3) join. Thresholds 0.8/0.4/0.2/0.1 give TPIR
    # 1/3, 2/3, 1, 1 -> AUC = (1/3 + 2/3 + 1 + 1) / 4 = 0.75
    ms2 = ProbeScores.from_matrix(mated, mates, k=2)
    ex2 = open_set_identification(ms2, us, fpirs=(0.25,), mode="exact")
    assert ex2.tpir[0.25] == pytest.approx(2 / 3)
    assert ex2.auc == pytest.approx(0.75)


def test_chunked_scoring_equals_full_matrix_and_handles_exact_ties():
    rng = np.random.default_rng(7)
    g, d = 9, 9
    gallery = np.eye(g, d)  # prototypes = one-hot: probe scores are its normalised entries
    ids = np.arange(g) * 10
    probes = rng.integers(0, 3, (50, d)).astype(np.float64)  # entries 0/1/2: exact ties
    probes[probes.sum(1) == 0, 0] = 1.0
    labels = ids[rng.integers(0, g, 50)]
    gal = build_gallery(gallery, ids)
    full = ProbeScores.from_matrix(probes / np.linalg.norm(probes, axis=1, keepdims=True),
                                   labels // 10, k=3)
    for chunk in (1, 7, 50):
        part = score_probes(gal, probes, labels, k=3, chunk_size=chunk, progress=False)
        np.testing.assert_array_equal(part.rank, full.rank)
        np.testing.assert_allclose(part.mate, full.mate, rtol=1e-6)
        np.testing.assert_allclose(part.kth, full.kth, rtol=1e-6)
        np.testing.assert_allclose(part.best_nonmate, full.best_nonmate, rtol=1e-6)


def test_gallery_prototype_is_mean_of_raw_then_normalised():
    emb = np.array([[3.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    gal = build_gallery(emb, ["b", "b", "a"])
    assert gal.identities.tolist() == ["a", "b"]
    # mean of raw (3,0),(0,1) = (1.5, 0.5), not the mean of normalised vectors (0.5, 0.5)
    np.testing.assert_allclose(gal.prototypes[1], np.array([1.5, 0.5]) / np.hypot(1.5, 0.5))
    np.testing.assert_allclose(gal.prototypes[0], [2 ** -0.5, 2 ** -0.5])


def test_evaluate_identification_end_to_end():
    rng = np.random.default_rng(11)
    g, d = 15, 16
    centres = rng.standard_normal((g, d))
    gal_ids = np.repeat(np.arange(g), 2)
    gal = centres[gal_ids] + rng.normal(0, 0.3, (2 * g, d))
    m_ids = rng.integers(0, g, 60)
    mated = centres[m_ids] + rng.normal(0, 0.8, (60, d))
    unmated = rng.standard_normal((40, d))
    res = evaluate_identification(gal, gal_ids, mated, m_ids, unmated, rank=5, progress=False)
    assert set(res.open_set) == {"reference", "exact"}
    # independent: full matrix in float64
    protos = np.stack([gal[gal_ids == i].mean(0) for i in range(g)])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    sm = (mated / np.linalg.norm(mated, axis=1, keepdims=True)) @ protos.T
    su = (unmated / np.linalg.norm(unmated, axis=1, keepdims=True)) @ protos.T
    want, want_auc = exact_brute(sm, m_ids, su, 5, (0.3, 0.2, 0.1, 0.01))
    assert res.open_set["exact"].tpir == pytest.approx(want, abs=1e-9)
    assert res.open_set["exact"].auc == pytest.approx(want_auc, abs=1e-9)
    assert res.cmc[1] == pytest.approx(np.mean([brute_rank(r, m) == 1 for r, m in zip(sm, m_ids)]))
    closed = evaluate_identification(gal, gal_ids, mated, m_ids, None, progress=False)
    assert closed.open_set == {} and closed.cmc == res.cmc


def test_malformed_inputs():
    gal = build_gallery(np.eye(3), [0, 1, 2])
    with pytest.raises(EmbeddingError, match="empty"):
        build_gallery(np.zeros((0, 3)), [])
    with pytest.raises(EmbeddingError, match="size 4 but 3"):
        score_probes(gal, np.ones((2, 4)), progress=False)
    with pytest.raises(EmbeddingError, match="nan"):
        score_probes(gal, np.array([[1.0, np.nan, 0.0]]), progress=False)
    with pytest.raises(EmbeddingError, match="one label per embedding"):
        build_gallery(np.eye(3), [0, 1])
    with pytest.raises(EmbeddingError, match="not in the gallery"):
        evaluate_identification(np.eye(3), [0, 1, 2], np.eye(3), [0, 1, 7], progress=False)
    ms = ProbeScores.from_matrix(np.eye(3), [0, 1, 2], k=2)
    us = ProbeScores.from_matrix(np.eye(3), [-1, -1, -1], k=2)
    with pytest.raises(ConfigError, match="unknown identification mode"):
        open_set_identification(ms, us, mode="interpolated")
    with pytest.raises(ConfigError, match="k=2"):
        open_set_identification(ms, us, mode="reference", rank=1)
    with pytest.raises(EmbeddingError, match="unmated"):
        open_set_identification(ms, ms)
    with pytest.raises(ConfigError):
        open_set_identification(ms, us, fpirs=(1.5,))
