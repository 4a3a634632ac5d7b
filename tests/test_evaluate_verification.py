"""1:1 verification metrics, ROC / TAR@FAR and gains against independent computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.model_selection import KFold

from btnet_adapters.evaluate import (EmbeddingError, GainWarning, contiguous_folds,
                                     cross_resolution_gain, evaluate_verification, flip_tta,
                                     kfold_accuracy, pair_distances, parse_settings, roc_curve,
                                     same_resolution_gain, tar_at_far)
from btnet_adapters.errors import ConfigError


def reference_kfold(dist: np.ndarray, issame: np.ndarray, n_folds: int) -> np.ndarray:
    """The insightface/BTNet ``calculate_roc`` loop, written out with python loops."""
    thresholds = np.arange(0, 4, 0.01)
    acc = []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(np.arange(dist.size)):
        best, best_acc = None, -1.0
        for th in thresholds:
            correct = sum((d < th) == s for d, s in zip(dist[train], issame[train]))
            a = correct / train.size
            if a > best_acc:  # first maximum wins, like np.argmax
                best, best_acc = th, a
        acc.append(sum((d < best) == s for d, s in zip(dist[test], issame[test])) / test.size)
    return np.asarray(acc)


def test_contiguous_folds_match_sklearn_kfold():
    for n, k in [(23, 10), (6000, 10), (10, 10), (7, 3)]:
        ours = contiguous_folds(n, k)
        for f, (_, test) in enumerate(KFold(n_splits=k, shuffle=False).split(np.arange(n))):
            np.testing.assert_array_equal(np.flatnonzero(ours == f), test)
    with pytest.raises(ConfigError):
        contiguous_folds(5, 10)


def test_kfold_accuracy_matches_reference_loop_with_ties():
    rng = np.random.default_rng(1)
    n = 137
    # distances on the 0.01 grid and repeated values: ties between pairs and with thresholds
    dist = np.round(rng.uniform(0, 4, n), 2)
    dist[:20] = dist[20:40]
    issame = (dist + rng.normal(0, 0.8, n)) < 2.0
    ours, _ = kfold_accuracy(dist, issame, n_folds=10)
    np.testing.assert_allclose(ours, reference_kfold(dist, issame, 10), rtol=0, atol=1e-12)


def test_evaluate_verification_from_embeddings_matches_reference():
    rng = np.random.default_rng(2)
    n, d = 200, 16
    a = rng.standard_normal((n, d))
    issame = rng.random(n) < 0.5
    b = np.where(issame[:, None], a + rng.normal(0, 0.9, (n, d)), rng.standard_normal((n, d)))
    res = evaluate_verification(a * 7.0, b * 0.3, issame)  # raw norms do not matter
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    dist = ((an - bn) ** 2).sum(1)
    ref = reference_kfold(dist, issame, 10)
    assert res.accuracy == pytest.approx(ref.mean(), abs=1e-12)
    assert res.accuracy_std == pytest.approx(ref.std(), abs=1e-12)
    assert res.n_genuine == issame.sum() and res.n_impostor == (~issame).sum()


def test_hand_worked_two_folds():
    # Four pairs, 2 contiguous folds. Unit vectors at angles -> squared L2 = 2 - 2 cos.
    angles = np.deg2rad([0.0, 90.0, 60.0, 180.0])  # distances 0, 2, 1, 4
    e1 = np.stack([np.ones(4), np.zeros(4)], 1)
    e2 = np.stack([np.cos(angles), np.sin(angles)], 1)
    issame = np.array([True, False, True, False])
    np.testing.assert_allclose(pair_distances(e1, e2), [0, 2, 1, 4], atol=1e-12)
    dist = np.array([0.0, 2.0, 1.0, 4.0])  # exact values: 2 - 2cos(60°) rounds just below 1
    acc, th = kfold_accuracy(dist, issame, n_folds=2)
    # Fold 0 tests pairs 0-1 with the threshold learnt on pairs 2-3 (d=1 same, d=4 diff):
    # thresholds 1.01 … 4.00 are perfect there; the first is 1.01. On pairs 0-1 (d=0 same,
    # d=2 diff) 1.01 is perfect: accuracy 1.
    # Fold 1 learns on pairs 0-1 (d=0 same, d=2 diff): first perfect threshold 0.01, which
    # rejects the d=1 genuine pair of fold 1 and rejects d=4: accuracy 1/2.
    np.testing.assert_allclose(th, [1.01, 0.01])
    np.testing.assert_allclose(acc, [1.0, 0.5])


def test_given_fold_ids_are_used():
    dist = np.array([0.1, 3.0, 0.2, 3.5, 0.3, 2.5])
    issame = np.array([1, 0, 1, 0, 1, 0], bool)
    # interleaved folds {0, 3}, {1, 4}, {2, 5}; the first perfect training threshold is just
    # above the largest genuine training distance.
    # fold 0 trains on 3.0d 0.2s 0.3s 2.5d -> 0.31; tests 0.1s 3.5d -> 1
    # fold 1 trains on 0.1s 0.2s 3.5d 2.5d -> 0.21; tests 3.0d 0.3s -> 1/2
    # fold 2 trains on 0.1s 3.0d 3.5d 0.3s -> 0.31; tests 0.2s 2.5d -> 1
    acc, th = kfold_accuracy(dist, issame, folds=[0, 1, 2, 0, 1, 2])
    np.testing.assert_allclose(acc, [1.0, 0.5, 1.0])
    np.testing.assert_allclose(th, [0.31, 0.21, 0.31])


def test_roc_curve_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    for drop in (True, False):
        for _ in range(5):
            y = rng.random(300) < 0.4
            s = np.round(rng.normal(y * 1.0, 1.0), 1)  # many tied scores
            ours = roc_curve(s, y, drop_intermediate=drop)
            fpr, tpr, thr = sk_roc_curve(y, s, drop_intermediate=drop)
            np.testing.assert_allclose(ours.fpr, fpr)
            np.testing.assert_allclose(ours.tpr, tpr)
            np.testing.assert_array_equal(ours.thresholds, thr)


def insightface_closest(labels, scores, far):
    """The IJB table rule, verbatim in spirit: min over (|fpr - far|, index) on flipped ROC."""
    fpr, tpr, _ = sk_roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(zip(abs(fpr - far), range(len(fpr))))
    return tpr[i]


def test_tar_at_far_closest_matches_insightface_and_at_most_brute_force():
    rng = np.random.default_rng(4)
    y = rng.random(2000) < 0.3
    s = np.round(rng.normal(y * 1.5, 1.0), 2)
    fars = (1e-3, 1e-2, 0.05, 0.1, 0.5)
    closest = tar_at_far(s, y, fars, rule="closest")
    at_most = tar_at_far(s, y, fars, rule="at_most")
    for far in fars:
        assert closest[far] == insightface_closest(y, s, far)
        best = 0.0
        for t in np.unique(s):  # accept score >= t
            fpr = np.mean(s[~y] >= t)
            if fpr <= far:
                best = max(best, np.mean(s[y] >= t))
        assert at_most[far] == pytest.approx(best, abs=1e-15)
    with pytest.raises(ConfigError):
        tar_at_far(s, y, fars, rule="nearest")


def test_tar_at_far_hand_example():
    # genuine scores 0.9, 0.8, 0.4 ; impostors 0.7, 0.3, 0.2, 0.1
    s = [0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1]
    y = [1, 1, 1, 0, 0, 0, 0]
    # ROC points (fpr, tpr): (0,0) (0,2/3) (1/4,2/3) (1/4,1) (1,1), sklearn drops none of the
    # corners. FAR 0.2: closest fpr is 1/4 -> ties resolved to the larger tpr, 1.
    # at_most 0.2: only fpr 0 qualifies -> 2/3.
    assert tar_at_far(s, y, [0.2], rule="closest")[0.2] == 1.0
    assert tar_at_far(s, y, [0.2], rule="at_most")[0.2] == pytest.approx(2 / 3)


def test_flip_tta_sums_raw_then_normalises():
    a = np.array([[3.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(flip_tta(a, b), [[1, 0], [0, 1]])
    # summing raw (not normalised) embeddings: the larger one dominates
    out = flip_tta([[4.0, 0.0]], [[0.0, 1.0]])
    np.testing.assert_allclose(out, [[4 / math.sqrt(17), 1 / math.sqrt(17)]])
    with pytest.raises(EmbeddingError):
        flip_tta(a, b[:1])


def test_malformed_embeddings_raise_clear_errors():
    good = np.ones((4, 8))
    y = [1, 0, 1, 0]
    with pytest.raises(EmbeddingError, match="size 4 but 8 is required"):
        evaluate_verification(good, np.ones((4, 4)), y)
    with pytest.raises(EmbeddingError, match="as many"):
        evaluate_verification(good, np.ones((3, 8)), y)
    bad = good.copy()
    bad[2, 3] = np.nan
    with pytest.raises(EmbeddingError, match="nan"):
        evaluate_verification(good, bad, y)
    with pytest.raises(EmbeddingError, match="zero norm"):
        evaluate_verification(good, np.zeros((4, 8)), y)
    with pytest.raises(EmbeddingError, match="issame"):
        evaluate_verification(good, good, [1, 0, 1])
    with pytest.raises(EmbeddingError, match="empty"):
        evaluate_verification(np.ones((0, 8)), np.ones((0, 8)), [])


def test_gains_hand_worked_and_zero_denominator():
    # Paper-style numbers: phi_hr 80, phi_mr 90, BTNet 95 -> (95-80)/|90-80| = 1.5
    assert cross_resolution_gain(95.0, 80.0, 90.0) == pytest.approx(1.5)
    # worse than phi_hr -> negative; reference below phi_hr still uses |.|
    assert same_resolution_gain(70.0, 80.0, 60.0) == pytest.approx(-0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert math.isnan(cross_resolution_gain(95.0, 80.0, 80.0))
    assert any(issubclass(w.category, GainWarning) for w in caught)
    with pytest.raises(EmbeddingError):
        same_resolution_gain(float("nan"), 1.0, 2.0)


def test_parse_settings():
    s = parse_settings("112&7, 112&14,7&7,14")
    assert [str(x) for x in s] == ["112&7", "112&14", "7&7", "14&14"]
    assert s[0].is_cross and not s[2].is_cross
    with pytest.raises(ConfigError):
        parse_settings("112&seven")


def test_single_class_fold_warns_naming_the_fold():
    from btnet_adapters.evaluate.verification import FoldWarning

    rng = np.random.default_rng(5)
    dist = rng.uniform(0, 4, 40)
    sorted_pairs = np.arange(40) < 20  # genuine first, then impostors: contiguous folds split by label
    with pytest.warns(FoldWarning) as caught:
        kfold_accuracy(dist, sorted_pairs, n_folds=4)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "fold 0 holds only genuine pairs (10)" in message and "fold 1 holds only genuine pairs (10)" in message
    assert "fold 2 holds only impostor pairs (10)" in message and "fold 3 holds only impostor pairs (10)" in message
    assert "sorted by label" in message
    # one mixed fold among single-class ones: only the single-class folds are named
    ids = np.array([0] * 10 + [1] * 10 + [2] * 10 + [1] * 10)
    with pytest.warns(FoldWarning) as caught:
        kfold_accuracy(dist, sorted_pairs, ids)
    message = str(caught[0].message)
    assert "fold 0 holds only genuine" in message and "fold 2 holds only impostor" in message
    assert "fold 1" not in message
    with pytest.warns(FoldWarning, match="fold 0 holds only impostor pairs"):  # one fold, one class
        kfold_accuracy(dist[:6], np.zeros(6, bool), n_folds=1)
    with pytest.warns(FoldWarning, match=r"… \(10 of 10 folds\).*folds of 1 pair are too small"):
        kfold_accuracy(dist[:10], np.arange(10) % 2 == 0, n_folds=10)
    # through evaluate_verification: 2 contiguous folds of a list sorted by label
    issame = np.arange(8) < 4
    with pytest.warns(FoldWarning, match="fold 0 holds only genuine pairs \\(4\\); fold 1 holds only impostor"):
        evaluate_verification(rng.standard_normal((8, 4)), rng.standard_normal((8, 4)), issame, n_folds=2)


def test_interleaved_folds_do_not_warn():
    rng = np.random.default_rng(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfold_accuracy(rng.uniform(0, 4, 40), np.arange(40) % 2 == 0, n_folds=10)
