"""IJB-B / IJB-C template protocols on image embeddings (insightface's IJB evaluation).

* **Image features** (:func:`image_features`): raw embedding of the aligned image plus that
  of its mirror (flip TTA), L2-normalised, times the detector score — the reference's
  defaults (``use_flip_test``, ``use_norm_score=False``, ``use_detector_score=True``); each
  step is an option.
* **Template features** (:func:`template_features`): mean of the image features of each media
  (a video's frames or a still), summed over the template's media, L2-normalised.
* **1:1** (:func:`ijb_verification`): cosine score per template pair; TAR@FAR for FAR
  1e-6 … 1e-1 read off the ROC with insightface's ``closest`` rule (see
  :data:`~.roc.FAR_RULES`) unless told otherwise.
* **1:N** (:func:`ijb_identification`): probe templates against a gallery with one template
  per subject. Two *different* FPIR notions, named apart:

  ``pseudo_fpir`` — insightface's pooled non-mate threshold: the threshold is the
  ``ceil(M·f)``-th highest of *all* non-mate scores of the ``M`` mated probes pooled
  together, and TPIR = fraction of mated probes whose mate score exceeds it (any rank).
  No unmated probe is involved; it is not NIST's FPIR.

  ``nist_fpir`` — NIST's per-search FPIR, computed only when some probes' subjects are not
  in the gallery (e.g. the G1 gallery with the mixed probes): unmated probes' best scores
  set the threshold (the ``exact`` mode of :mod:`.identification`) and TPIR counts mated
  probes found at rank <= ``nist_rank`` above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .embeddings import as_embeddings, l2_normalize
from .errors import EmbeddingError
from .identification import (DEFAULT_CMC_RANKS, Gallery, OpenSetResult, ProbeScores, cmc,
                             iter_score_blocks, mate_indices, open_set_identification,
                             summarise_scores)
from .roc import RocCurve, roc_curve, tar_at_far

#: FAR targets of the IJB 1:1 table.
IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: FPIR targets of insightface's IJB 1:N evaluation.
IJB_FPIRS = (0.01, 0.1)


def image_features(raw: Any, raw_flipped: Any = None, *, face_scores: Any = None,
                   normalize: bool = True) -> np.ndarray:
    """Per-image features for templates.

    Args:
        raw: ``N × D`` raw embeddings of the aligned images.
        raw_flipped: raw embeddings of the mirrored images, summed with ``raw`` when given.
        face_scores: ``N`` detector scores to multiply the features by (``None``: no weight).
        normalize: L2-normalise before weighting (reference: True; False keeps the norm as
            a quality weight, insightface's "norm score" mode).

    Returns:
        ``N × D`` features in the input's float dtype (float32 stays float32).
    """
    feats = as_embeddings(raw, "image embeddings")
    if raw_flipped is not None:
        flipped = as_embeddings(raw_flipped, "flipped image embeddings", dim=feats.shape[1])
        if flipped.shape[0] != feats.shape[0]:
            raise EmbeddingError(f"{feats.shape[0]} images but {flipped.shape[0]} flipped images")
        feats = feats + flipped
    if normalize:
        feats = l2_normalize(feats, "image features")
    if face_scores is not None:
        w = np.asarray(face_scores, dtype=np.float64).reshape(-1)
        if w.size != feats.shape[0] or not np.isfinite(w).all():
            raise EmbeddingError(f"need one finite detector score per image ({feats.shape[0]}), "
                                 f"got {w.size}")
        feats = feats * w[:, None].astype(feats.dtype)
    return feats


def _group_sums(values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums of ``values`` rows per unique key: ``(unique keys, sums, counts)``."""
    uniq, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    return uniq, np.add.reduceat(values[order], starts, axis=0, dtype=np.float64), counts


def template_features(features: Any, templates: Any, medias: Any, *,
                      select: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Template features: per-media mean, summed over media, L2-normalised.

    Args:
        features: ``N × D`` image features (:func:`image_features`).
        templates: template id per image.
        medias: media id per image.
        select: template ids to build (default: all), e.g. a 1:N gallery list.

    Returns:
        ``(template ids sorted ascending, T × D float64 features)``.
    """
    feats = as_embeddings(features, "image features")
    n = feats.shape[0]
    t = np.asarray(templates, dtype=np.int64).reshape(-1)
    m = np.asarray(medias, dtype=np.int64).reshape(-1)
    if t.size != n or m.size != n:
        raise EmbeddingError(f"need a template and a media id per image ({n}); got {t.size} "
                             f"and {m.size}")
    if select is not None:
        wanted = np.unique(np.asarray(select, dtype=np.int64))
        missing = np.setdiff1d(wanted, t)
        if missing.size:
            raise EmbeddingError(f"{missing.size} selected templates have no images, e.g. "
                                 f"{missing[:5].tolist()}")
        keep = np.isin(t, wanted)
        feats, t, m = feats[keep], t[keep], m[keep]
    keys, media_sums, counts = _group_sums(feats, np.stack([t, m], axis=1))
    ids, sums, _ = _group_sums(media_sums / counts[:, None], keys[:, 0])
    norms = np.linalg.norm(sums, axis=1)
    if (norms == 0).any():
        raise EmbeddingError(f"templates {ids[norms == 0][:5].tolist()} have a zero feature "
                             f"(all detector scores 0?) and cannot be normalised")
    return ids, sums / norms[:, None]


def template_pair_scores(template_ids: Any, template_feats: Any, t1: Any, t2: Any,
                         chunk_size: int = 100_000) -> np.ndarray:
    """Cosine score of each template pair ``(t1[i], t2[i])``."""
    ids = np.asarray(template_ids, dtype=np.int64).reshape(-1)
    feats = as_embeddings(template_feats, "template features")
    if ids.size != feats.shape[0]:
        raise EmbeddingError(f"{ids.size} template ids for {feats.shape[0]} template features")
    order = np.argsort(ids)
    a, b = np.asarray(t1, np.int64).reshape(-1), np.asarray(t2, np.int64).reshape(-1)
    if a.size != b.size:
        raise EmbeddingError(f"{a.size} first and {b.size} second templates")
    rows = []
    for side in (a, b):
        pos = np.searchsorted(ids, side, sorter=order).clip(0, ids.size - 1)
        found = ids[order[pos]] == side
        if not found.all():
            raise EmbeddingError(f"pairs name templates without features, e.g. "
                                 f"{np.unique(side[~found])[:5].tolist()}")
        rows.append(order[pos])
    out = np.empty(a.size)
    for s in range(0, a.size, chunk_size):
        out[s:s + chunk_size] = np.einsum("ij,ij->i", feats[rows[0][s:s + chunk_size]],
                                          feats[rows[1][s:s + chunk_size]])
    return out


@dataclass(frozen=True)
class IJBVerificationResult:
    """IJB 1:1 numbers: TAR@FAR under a named rule, and the ROC."""

    tar_at_far: dict[float, float]
    far_rule: str
    roc: RocCurve = field(repr=False)
    n_genuine: int
    n_impostor: int

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary."""
        out: dict[str, Any] = {"tar_at_far": {f"{k:g}": v for k, v in self.tar_at_far.items()},
                               "far_rule": self.far_rule, "auc": self.roc.auc,
                               "n_genuine": self.n_genuine, "n_impostor": self.n_impostor}
        if curves:
            out["roc"] = {"fpr": self.roc.fpr.tolist(), "tpr": self.roc.tpr.tolist()}
        return out


def ijb_verification(scores: Any, labels: Any, *, fars: Sequence[float] = IJB_FARS,
                     far_rule: str = "closest") -> IJBVerificationResult:
    """TAR@FAR (and ROC) of template-pair scores (:func:`template_pair_scores`)."""
    y = np.asarray(labels).reshape(-1)
    return IJBVerificationResult(tar_at_far=tar_at_far(scores, y, fars, far_rule),
                                 far_rule=far_rule, roc=roc_curve(scores, y),
                                 n_genuine=int(np.sum(y == 1)), n_impostor=int(np.sum(y == 0)))


def template_subjects(templates: Any, subjects: Any) -> tuple[np.ndarray, np.ndarray]:
    """One subject per template from a 1:N list with one row per image."""
    t = np.asarray(templates, np.int64).reshape(-1)
    s = np.asarray(subjects, np.int64).reshape(-1)
    if t.size != s.size or t.size == 0:
        raise EmbeddingError(f"need one subject per row: {t.size} templates, {s.size} subjects")
    pairs = np.unique(np.stack([t, s], axis=1), axis=0)
    ids, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        raise EmbeddingError(f"templates {ids[counts > 1][:5].tolist()} list several subjects")
    return pairs[:, 0], pairs[:, 1]


@dataclass(frozen=True)
class IJBIdentificationResult:
    """IJB 1:N numbers; ``pseudo_fpir`` and ``nist_fpir`` are different metrics."""

    cmc: dict[int, float]
    pseudo_fpir: dict[float, float]
    pseudo_fpir_thresholds: dict[float, float]
    nist_fpir: OpenSetResult | None
    n_mated: int
    n_unmated: int
    gallery_size: int

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {"cmc": {str(k): v for k, v in self.cmc.items()},
                "pseudo_fpir": {f"{k:g}": v for k, v in self.pseudo_fpir.items()},
                "pseudo_fpir_thresholds": {f"{k:g}": v
                                           for k, v in self.pseudo_fpir_thresholds.items()},
                "nist_fpir": self.nist_fpir.to_dict(curves) if self.nist_fpir else None,
                "n_mated": self.n_mated, "n_unmated": self.n_unmated,
                "gallery_size": self.gallery_size}


def _top_values(current: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    merged = np.concatenate([current, new])
    return merged if merged.size <= k else np.partition(merged, merged.size - k)[-k:]


def ijb_identification(probe_feats: Any, probe_subjects: Any, gallery_feats: Any,
                       gallery_subjects: Any, *, fpirs: Sequence[float] = IJB_FPIRS,
                       cmc_ranks: Sequence[int] = DEFAULT_CMC_RANKS[:3], nist_rank: int = 1,
                       chunk_size: int | None = None, progress: bool = True
                       ) -> IJBIdentificationResult:
    """1:N identification of probe templates against gallery templates (one per subject).

    Args:
        probe_feats: ``P × D`` probe template features.
        probe_subjects: subject per probe template.
        gallery_feats: ``G × D`` gallery template features.
        gallery_subjects: subject per gallery template (unique).
        fpirs: FPIR targets (both metrics), each in (0, 1].
        cmc_ranks: CMC ranks over the mated probes.
        nist_rank: rank of the NIST TPIR.
        chunk_size: probes scored per block.
        progress: show a tqdm bar on terminals.
    """
    g_feats = l2_normalize(as_embeddings(gallery_feats, "gallery template features"),
                           "gallery template features")
    g_subj = np.asarray(gallery_subjects).reshape(-1)
    if g_subj.size != g_feats.shape[0]:
        raise EmbeddingError(f"{g_subj.size} gallery subjects for {g_feats.shape[0]} templates")
    uniq, counts = np.unique(g_subj, return_counts=True)
    if (counts > 1).any():
        raise EmbeddingError(f"gallery subjects must be unique; repeated: "
                             f"{uniq[counts > 1][:5].tolist()}")
    if any(not 0.0 < f <= 1.0 for f in fpirs):
        raise ConfigError(f"FPIR targets must lie in (0, 1], got {list(fpirs)}")
    order = np.argsort(g_subj, kind="stable")
    gallery = Gallery(identities=g_subj[order], prototypes=g_feats[order])
    n_probes = as_embeddings(probe_feats, "probe template features",
                             dim=g_feats.shape[1]).shape[0]
    subj = np.asarray(probe_subjects).reshape(-1)
    if subj.size != n_probes:
        raise EmbeddingError(f"{subj.size} probe subjects for {n_probes} probe templates")
    idx = mate_indices(gallery, subj)
    n_mated = int((idx >= 0).sum())
    if n_mated == 0:
        raise EmbeddingError("no probe subject is enrolled in the gallery")
    need = max(math.ceil(n_mated * f) for f in fpirs)
    pooled = np.empty(0)
    parts: list[ProbeScores] = []
    for sl, block in iter_score_blocks(gallery, probe_feats, chunk_size=chunk_size,
                                       dtype=np.float64, progress=progress):
        parts.append(summarise_scores(block, idx[sl], 1))
        rows = np.flatnonzero(idx[sl] >= 0)
        nonmate = block[rows]
        nonmate[np.arange(rows.size), idx[sl][rows]] = -np.inf
        flat = nonmate.reshape(-1)
        flat = flat[np.isfinite(flat)]
        pooled = _top_values(pooled, flat if flat.size <= need
                             else np.partition(flat, flat.size - need)[-need:], need)
    scores = ProbeScores.concat(parts)
    mated, unmated = scores.subset(scores.is_mated), scores.subset(~scores.is_mated)
    pooled = np.sort(pooled)[::-1]
    pseudo, pseudo_th = {}, {}
    for f in fpirs:
        pos = math.ceil(n_mated * f)
        th = float(pooled[pos - 1]) if pos <= pooled.size else -math.inf
        pseudo_th[float(f)] = th
        pseudo[float(f)] = float(np.mean(mated.mate > th))
    nist = (open_set_identification(mated, unmated, fpirs=fpirs, mode="exact", rank=nist_rank)
            if len(unmated) else None)
    return IJBIdentificationResult(cmc=cmc(mated, cmc_ranks), pseudo_fpir=pseudo,
                                   pseudo_fpir_thresholds=pseudo_th, nist_fpir=nist,
                                   n_mated=n_mated, n_unmated=len(unmated),
                                   gallery_size=len(gallery))

