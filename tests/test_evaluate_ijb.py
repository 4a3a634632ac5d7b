"""IJB templates, 1:1 TAR@FAR, 1:N pseudo_fpir / nist_fpir and 5-point alignment."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve

from btnet_adapters.evaluate import (EmbeddingError, ProbeScores, align_face, arcface_template,
                                     ijb_identification, ijb_verification, image_features,
                                     open_set_identification, similarity_transform,
                                     template_features, template_pair_scores, template_subjects)
from btnet_adapters.evaluate.align import ARCFACE_TEMPLATE_112


def reference_templates(img_feats, templates, medias):
    """insightface's image2template_feature loop."""
    unique_templates = np.unique(templates)
    out = np.zeros((len(unique_templates), img_feats.shape[1]))
    for c, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats, face_medias = img_feats[ind_t], medias[ind_t]
        media_feats = []
        for u in np.unique(face_medias):
            (ind_m,) = np.where(face_medias == u)
            media_feats.append(np.mean(face_feats[ind_m], 0))
        out[c] = np.sum(media_feats, 0)
    return unique_templates, out / np.linalg.norm(out, axis=1, keepdims=True)


def random_ijb(seed=0, n=120, d=8):
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((n, d))
    flipped = raw + rng.normal(0, 0.1, (n, d))
    templates = rng.integers(1, 25, n) * 3
    medias = rng.integers(100, 104, n)
    scores = rng.uniform(0.1, 1.0, n).astype(np.float32)
    return raw, flipped, templates, medias, scores


def test_image_and_template_features_match_reference_loop():
    raw, flipped, templates, medias, scores = random_ijb()
    feats = image_features(raw, flipped, face_scores=scores)
    summed = raw + flipped
    want_img = summed / np.linalg.norm(summed, axis=1, keepdims=True) * scores[:, None]
    np.testing.assert_allclose(feats, want_img, rtol=1e-12)
    ids, tf = template_features(feats, templates, medias)
    want_ids, want = reference_templates(want_img, templates, medias)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(tf, want, rtol=1e-10, atol=1e-12)
    sel_ids, sel = template_features(feats, templates, medias, select=want_ids[[3, 1]])
    np.testing.assert_array_equal(sel_ids, want_ids[[1, 3]])
    np.testing.assert_allclose(sel, want[[1, 3]], rtol=1e-10, atol=1e-12)


def test_template_features_hand_worked():
    # template 7: media 1 has (1,0) and (0,1) -> mean (0.5, 0.5); media 2 has (0, 2).
    # sum (0.5, 2.5) -> normalised (0.5, 2.5)/sqrt(6.5). Per-media means matter: a plain
    # mean of the three images would point elsewhere.
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    ids, tf = template_features(feats, [7, 7, 7], [1, 1, 2])
    assert ids.tolist() == [7]
    np.testing.assert_allclose(tf[0], np.array([0.5, 2.5]) / math.sqrt(6.5))
    with pytest.raises(EmbeddingError, match="zero feature"):
        template_features(np.zeros((2, 2)), [1, 1], [1, 2])
    with pytest.raises(EmbeddingError, match="no images"):
        template_features(feats, [7, 7, 7], [1, 1, 2], select=[8])


def test_pair_scores_and_verification_match_insightface():
    raw, flipped, templates, medias, scores = random_ijb(1, n=300)
    ids, tf = template_features(image_features(raw, flipped, face_scores=scores), templates,
                                medias)
    rng = np.random.default_rng(2)
    t1, t2 = rng.choice(ids, 500), rng.choice(ids, 500)
    s = template_pair_scores(ids, tf, t1, t2, chunk_size=64)
    lookup = {t: i for i, t in enumerate(ids)}
    want = np.array([tf[lookup[a]] @ tf[lookup[b]] for a, b in zip(t1, t2)])
    np.testing.assert_allclose(s, want, rtol=1e-12)
    labels = (rng.random(500) < 0.3).astype(int)
    res = ijb_verification(s, labels, fars=(1e-3, 1e-2, 1e-1))
    fpr, tpr, _ = sk_roc_curve(labels, s)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    for far, tar in res.tar_at_far.items():
        _, i = min(zip(abs(fpr - far), range(len(fpr))))
        assert tar == tpr[i]
    with pytest.raises(EmbeddingError, match="without features"):
        template_pair_scores(ids, tf, [ids[0]], [10 ** 9])


def insightface_evaluation(query_feats, gallery_feats, mask, fars):
    """insightface/BTNet ``evaluation`` (pooled non-mate threshold), as written there."""
    query_num = query_feats.shape[0]
    similarity = np.dot(query_feats, gallery_feats.T)
    top_inds = np.argsort(-similarity, kind="stable")
    top1 = np.mean([top_inds[i, 0] == mask[i] for i in range(query_num)])
    required = [math.ceil(query_num * x) for x in fars]
    pos = similarity[np.arange(query_num), mask].copy()
    sims = similarity.copy()
    sims[np.arange(query_num), mask] = -2.0
    neg = heapq.nlargest(max(required), sims[sims > -2.0])
    return top1, {f: np.sum(pos > neg[r - 1]) / query_num for f, r in zip(fars, required)}


def test_ijb_identification_pseudo_fpir_matches_insightface():
    rng = np.random.default_rng(3)
    g, d = 40, 12
    gallery = rng.standard_normal((g, d))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    subjects = rng.permutation(1000)[:g]
    mask = rng.integers(0, g, 150)
    probes = gallery[mask] + rng.normal(0, 0.35, (150, d))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    fars = (0.01, 0.1)
    res = ijb_identification(probes, subjects[mask], gallery, subjects, fpirs=fars,
                             chunk_size=17, progress=False)
    top1, pseudo = insightface_evaluation(probes, gallery, mask, fars)
    assert res.cmc[1] == pytest.approx(top1)
    assert res.pseudo_fpir == pytest.approx(pseudo)
    assert res.nist_fpir is None and res.n_unmated == 0


def test_ijb_identification_nist_fpir_uses_unmated_probes():
    rng = np.random.default_rng(4)
    g, d = 20, 10
    gallery = rng.standard_normal((g, d))
    subjects = np.arange(g) + 100
    mated_idx = rng.integers(0, g, 60)
    probes = np.vstack([gallery[mated_idx] + rng.normal(0, 0.5, (60, d)),
                        rng.standard_normal((30, d))])
    probe_subj = np.r_[subjects[mated_idx], np.arange(30) + 900]  # 30 not enrolled
    res = ijb_identification(probes, probe_subj, gallery, subjects, fpirs=(0.1, 0.2),
                             progress=False)
    assert res.n_mated == 60 and res.n_unmated == 30
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    pn = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    s = pn @ gn.T
    want = open_set_identification(ProbeScores.from_matrix(s[:60], mated_idx, k=1),
                                   ProbeScores.from_matrix(s[60:], [-1] * 30, k=1),
                                   fpirs=(0.1, 0.2), mode="exact")
    assert res.nist_fpir.tpir == pytest.approx(want.tpir)
    # brute force: FPIR 0.1 of 30 unmated allows 3 false alarms -> 4th best unmated score
    u = np.sort(s[60:].max(1))[::-1]
    hits = np.mean([(np.argmax(r) == m) and r[m] > u[3] for r, m in zip(s[:60], mated_idx)])
    assert res.nist_fpir.tpir[0.1] == pytest.approx(hits)


def test_ijb_identification_errors():
    g = np.eye(3)
    with pytest.raises(EmbeddingError, match="unique"):
        ijb_identification(g, [1, 2, 3], g, [1, 1, 2], progress=False)
    with pytest.raises(EmbeddingError, match="no probe subject"):
        ijb_identification(g, [7, 8, 9], g, [1, 2, 3], progress=False)
    ts, ss = template_subjects([5, 5, 6, 7], [1, 1, 2, 3])
    assert ts.tolist() == [5, 6, 7] and ss.tolist() == [1, 2, 3]
    with pytest.raises(EmbeddingError, match="several subjects"):
        template_subjects([5, 5], [1, 2])


def test_similarity_transform_matches_skimage():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(5)
    collinear = np.c_[np.arange(5.0), 2 * np.arange(5.0) + 1]
    mirrored = ARCFACE_TEMPLATE_112 * [-1, 1]  # best fit would need a reflection
    for src in [rng.uniform(0, 200, (5, 2)) for _ in range(5)] + [collinear, mirrored]:
        if hasattr(SimilarityTransform, "from_estimate"):
            tform = SimilarityTransform.from_estimate(src, ARCFACE_TEMPLATE_112)
        else:
            tform = SimilarityTransform()
            tform.estimate(src, ARCFACE_TEMPLATE_112)
        np.testing.assert_allclose(similarity_transform(src, ARCFACE_TEMPLATE_112),
                                   tform.params[:2], rtol=1e-9, atol=1e-9)


def test_template_at_any_size_keeps_pixel_centres():
    np.testing.assert_allclose(arcface_template(112), ARCFACE_TEMPLATE_112)
    t7 = arcface_template(7)
    # pixel-centre mapping: 112 px -> 7 px is a 16× box; x=38.2946 -> (38.7946)/16 - 0.5
    np.testing.assert_allclose(t7[0], [(38.2946 + 0.5) / 16 - 0.5, (51.6963 + 0.5) / 16 - 0.5])


def test_align_face_maps_landmarks_onto_the_template_of_any_size():
    # Warp images whose pixel values are their own source coordinates: bilinear resampling
    # reproduces these linear ramps exactly, so the output tells which source point every
    # output pixel samples. The template points of the r×r crop must sample the landmarks.
    ang, scale, shift = np.deg2rad(20), 1.7, np.array([150.0, 120.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    lm = ARCFACE_TEMPLATE_112 @ rot.T * scale + shift
    yy, xx = np.mgrid[:480, :480].astype(np.float32)  # crop stays inside
    coords = np.dstack([xx, yy])
    for size in (112, 28, 7):
        out = align_face(coords, lm, size).reshape(-1, 2).astype(np.float64)
        v, u = np.mgrid[:size, :size]
        design = np.stack([u.ravel(), v.ravel(), np.ones(size * size)], 1)
        affine, *_ = np.linalg.lstsq(design, out, rcond=None)
        sampled = np.c_[arcface_template(size), np.ones(5)] @ affine
        np.testing.assert_allclose(sampled, lm, atol=2e-3)
    with pytest.raises(Exception, match="5 × 2"):
        align_face(coords, lm[:4], 112)
