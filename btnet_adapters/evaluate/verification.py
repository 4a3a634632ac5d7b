"""1:1 verification metrics on embeddings, as the reference (insightface ``verification.py``).

Protocol, exactly:

* both embeddings of a pair are L2-normalised (pass flip-summed raw embeddings, see
  :func:`~.embeddings.flip_tta`, or already normalised ones);
* distance = squared L2 between the normalised embeddings (``2 − 2·cos``);
* a pair is predicted "same" when ``distance < threshold`` (strict);
* thresholds: ``np.arange(0, 4, 0.01)`` (400 values, 0 … 3.99);
* folds: 10 *contiguous* folds like ``sklearn.model_selection.KFold(10, shuffle=False)`` (the
  first ``n % 10`` folds hold one pair more), or the fold ids a protocol file gives;
* per fold, the threshold with the best accuracy on the other folds (first one on ties) is
  applied to the held-out fold; reported: mean and population std (``np.std``) over folds.
  With a single fold the threshold is chosen and scored on the same pairs (as the reference).
  A fold holding only genuine or only impostor pairs is named in a :class:`FoldWarning`.

TAR@FAR (1e-4 … 1e-1 by default) is read off the ROC over all pairs, score = cosine
similarity ``1 − distance/2``, with a named rule (:data:`~.roc.FAR_RULES`; default
``closest``, insightface's). The reference's interpolated per-fold ``VAL@FAR`` is not
computed. Targets below ``1 / impostor pairs`` cannot be resolved by the data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .embeddings import as_embeddings, l2_normalize
from .errors import EmbeddingError
from .roc import RocCurve, roc_curve, tar_at_far

#: The reference's threshold grid on squared L2 distance.
DEFAULT_THRESHOLDS = np.arange(0, 4, 0.01)
#: Default FAR targets for 1:1 verification sets.
DEFAULT_FARS = (1e-4, 1e-3, 1e-2, 1e-1)


class FoldWarning(UserWarning):
    """A verification fold holds a single class (only genuine or only impostor pairs): its
    held-out accuracy measures one kind of error only, and the other folds choose its threshold
    from unbalanced pairs. Usually the pair list is sorted by label; give fold ids or interleave."""


@dataclass(frozen=True)
class VerificationResult:
    """Accuracy over folds plus ROC / TAR@FAR over all pairs.

    Attributes:
        accuracy: mean held-out accuracy over folds, in [0, 1].
        accuracy_std: population standard deviation of the fold accuracies.
        fold_accuracies: held-out accuracy per fold.
        fold_thresholds: squared-L2 threshold chosen on the other folds, per fold.
        tar_at_far: ``{far: tar}`` under ``far_rule``.
        far_rule: ``"closest"`` or ``"at_most"`` (see :data:`~.roc.FAR_RULES`).
        roc: ROC over all pairs (scores = cosine similarity).
        n_genuine: number of same-identity pairs.
        n_impostor: number of different-identity pairs.
    """

    accuracy: float
    accuracy_std: float
    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray
    tar_at_far: dict[float, float]
    far_rule: str
    roc: RocCurve = field(repr=False)
    n_genuine: int
    n_impostor: int

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary (with the ROC arrays when ``curves``)."""
        out: dict[str, Any] = {
            "accuracy": self.accuracy, "accuracy_std": self.accuracy_std,
            "fold_accuracies": self.fold_accuracies.tolist(),
            "fold_thresholds": self.fold_thresholds.tolist(),
            "tar_at_far": {f"{k:g}": v for k, v in self.tar_at_far.items()},
            "far_rule": self.far_rule, "auc": self.roc.auc,
            "n_genuine": self.n_genuine, "n_impostor": self.n_impostor,
        }
        if curves:
            out["roc"] = {"fpr": self.roc.fpr.tolist(), "tpr": self.roc.tpr.tolist()}
        return out


def pair_distances(emb1: Any, emb2: Any) -> np.ndarray:
    """Squared L2 distance between the L2-normalised rows of ``emb1`` and ``emb2``."""
    a = as_embeddings(emb1, "first embeddings of the pairs")
    b = as_embeddings(emb2, "second embeddings of the pairs", dim=a.shape[1])
    if a.shape[0] != b.shape[0]:
        raise EmbeddingError(f"pairs need as many first as second embeddings: {a.shape[0]} vs "
                             f"{b.shape[0]}")
    a = l2_normalize(a, "first embeddings of the pairs")
    b = l2_normalize(b, "second embeddings of the pairs")
    return np.sum(np.square(a - b), axis=1)


def contiguous_folds(n: int, n_folds: int = 10) -> np.ndarray:
    """Fold id per item for ``KFold(n_folds, shuffle=False)``: contiguous blocks, larger first."""
    if n_folds < 1 or n_folds > n:
        raise ConfigError(f"n_folds must be between 1 and the number of pairs ({n}), got {n_folds}")
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def accuracies(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of ``distance < threshold`` for every threshold (vectorised)."""
    same = np.sort(dist[issame])
    diff = np.sort(dist[~issame])
    tp = np.searchsorted(same, thresholds, side="left")
    tn = diff.size - np.searchsorted(diff, thresholds, side="left")
    return (tp + tn) / dist.size


def kfold_accuracy(dist: Any, issame: Any, folds: Any = None, *, n_folds: int = 10,
                   thresholds: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out accuracy and chosen threshold per fold (see the module docstring).

    Args:
        dist: squared L2 distance per pair.
        issame: True for genuine pairs.
        folds: fold id per pair; ``None`` for ``n_folds`` contiguous folds.
        n_folds: number of contiguous folds when ``folds`` is None.
        thresholds: the distance grid (default :data:`DEFAULT_THRESHOLDS`).

    Returns:
        ``(fold_accuracies, fold_thresholds)``, folds in increasing id order.
    """
    d = np.asarray(dist, dtype=np.float64).reshape(-1)
    y = _issame(issame, d.size)
    grid = DEFAULT_THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(np.diff(grid) < 0):
        raise ConfigError("thresholds must be a non-empty increasing 1-D grid")
    ids = contiguous_folds(d.size, n_folds) if folds is None else np.asarray(folds).reshape(-1)
    if ids.size != d.size:
        raise EmbeddingError(f"{ids.size} fold ids for {d.size} pairs")
    fold_ids = np.unique(ids)
    _warn_single_class(ids, fold_ids, y)
    accs, ths = [], []
    for f in fold_ids:
        test = ids == f
        train = ~test if fold_ids.size > 1 else test
        best = grid[int(np.argmax(accuracies(d[train], y[train], grid)))]
        ths.append(best)
        accs.append(accuracies(d[test], y[test], np.asarray([best]))[0])
    return np.asarray(accs), np.asarray(ths)


def _warn_single_class(ids: np.ndarray, fold_ids: np.ndarray, y: np.ndarray) -> None:
    """One :class:`FoldWarning` naming every fold that holds a single class."""
    bad = []
    for f in fold_ids:
        labels = y[ids == f]
        if labels.all() or not labels.any():
            kind = "genuine" if labels.all() else "impostor"
            bad.append(f"fold {f} holds only {kind} pairs ({labels.size})")
    if bad:
        named = "; ".join(bad[:6]) + (f"; … ({len(bad)} of {fold_ids.size} folds)" if len(bad) > 6 else "")
        smallest = min(int((ids == f).sum()) for f in fold_ids)
        hint = (f"folds of {smallest} pair{'s' if smallest > 1 else ''} are too small: use fewer folds or more pairs"
                if smallest < 4 else "is the pair list sorted by label? Give fold ids (e.g. the protocol's) or "
                "interleave genuine and impostor pairs")
        warnings.warn(
            f"verification {named}: such a fold's accuracy counts one kind of error only and its threshold "
            f"is chosen on unbalanced pairs; {hint}.", FoldWarning, stacklevel=3)


def _issame(issame: Any, n: int) -> np.ndarray:
    y = np.asarray(issame).reshape(-1)
    if y.size != n:
        raise EmbeddingError(f"{y.size} issame labels for {n} pairs")
    if y.dtype.kind not in "biu" or not np.isin(y, (0, 1)).all():
        raise EmbeddingError("issame must hold booleans or 0/1")
    return y.astype(bool)


def evaluate_verification(emb1: Any, emb2: Any, issame: Any, *, folds: Any = None,
                          n_folds: int = 10, thresholds: Any = None,
                          fars: Sequence[float] = DEFAULT_FARS,
                          far_rule: str = "closest") -> VerificationResult:
    """Score a 1:1 verification protocol from the two embeddings of every pair.

    Args:
        emb1: ``P × D`` embeddings of the first images (raw, flip-summed or normalised).
        emb2: ``P × D`` embeddings of the second images.
        issame: ``P`` booleans.
        folds: fold id per pair (e.g. :attr:`PairList.folds`); ``None`` for contiguous folds.
        n_folds: number of contiguous folds (reference: 10).
        thresholds: squared-L2 grid (reference: ``np.arange(0, 4, 0.01)``).
        fars: FAR targets for TAR@FAR.
        far_rule: ``"closest"`` or ``"at_most"``.
    """
    dist = pair_distances(emb1, emb2)
    y = _issame(issame, dist.size)
    fold_acc, fold_thr = kfold_accuracy(dist, y, folds, n_folds=n_folds, thresholds=thresholds)
    scores = 1.0 - dist / 2.0
    return VerificationResult(
        accuracy=float(fold_acc.mean()), accuracy_std=float(fold_acc.std()),
        fold_accuracies=fold_acc, fold_thresholds=fold_thr,
        tar_at_far=tar_at_far(scores, y, fars, far_rule), far_rule=far_rule,
        roc=roc_curve(scores, y), n_genuine=int(y.sum()), n_impostor=int((~y).sum()),
    )
