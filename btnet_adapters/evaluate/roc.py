"""ROC curves and TAR at FAR for similarity scores (higher = more similar)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .errors import EmbeddingError

#: TAR@FAR operating-point rules.
#: ``closest`` — insightface's IJB tables: the ROC point (scikit-learn ``roc_curve`` with its
#: default ``drop_intermediate=True``) whose FPR is closest to the target, ties to the larger
#: TPR; the FPR reached may exceed the target.
#: ``at_most`` — the largest TPR over every threshold whose FPR does not exceed the target.
FAR_RULES = ("closest", "at_most")


@dataclass(frozen=True)
class RocCurve:
    """A ROC curve; point ``i`` accepts the pairs with ``score >= thresholds[i]``.

    ``thresholds[0]`` is ``inf`` (nothing accepted), exactly as
    ``sklearn.metrics.roc_curve`` returns it.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the curve (trapezoids)."""
        return float(np.trapezoid(self.tpr, self.fpr))


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise EmbeddingError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise EmbeddingError("scores contain nan/inf")
    if y.dtype.kind not in "biu" or not np.isin(y, (0, 1)).all():
        raise EmbeddingError("labels must be booleans or 0/1")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise EmbeddingError(f"a ROC needs both genuine and impostor pairs "
                             f"({int(y.sum())} genuine, {int((~y).sum())} impostor)")
    return s, y


def roc_curve(scores: Any, labels: Any, *, drop_intermediate: bool = True) -> RocCurve:
    """ROC of ``scores`` against boolean ``labels`` — identical to ``sklearn.metrics.roc_curve``.

    Args:
        scores: similarity per pair (higher = more likely the same identity).
        labels: True / 1 for genuine pairs.
        drop_intermediate: drop collinear points, as scikit-learn does by default.
    """
    s, y = _scores_labels(scores, labels)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y, dtype=np.int64)[last_of_value]
    fps = 1 + last_of_value - tps
    thresholds = s[last_of_value]
    if drop_intermediate and fps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0, fps]
    tps = np.r_[0, tps]
    return RocCurve(fpr=fps / fps[-1], tpr=tps / tps[-1], thresholds=np.r_[np.inf, thresholds])


def tar_at_far(scores: Any, labels: Any, fars: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
               rule: str = "closest") -> dict[float, float]:
    """True accept rate at each false accept rate target.

    Args:
        scores: similarity per pair.
        labels: True / 1 for genuine pairs.
        fars: FAR targets.
        rule: ``"closest"`` (insightface's IJB tables) or ``"at_most"`` — see :data:`FAR_RULES`.

    Returns:
        ``{far: tar}`` with TAR in [0, 1].
    """
    if rule not in FAR_RULES:
        raise ConfigError(f"unknown TAR@FAR rule {rule!r}; accepted: {FAR_RULES}")
    roc = roc_curve(scores, labels, drop_intermediate=rule == "closest")
    out: dict[float, float] = {}
    for far in fars:
        if rule == "closest":
            gap = np.abs(roc.fpr - far)
            out[float(far)] = float(roc.tpr[np.flatnonzero(gap == gap.min())[-1]])
        else:
            out[float(far)] = float(roc.tpr[roc.fpr <= far].max())
    return out
