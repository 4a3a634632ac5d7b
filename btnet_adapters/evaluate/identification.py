"""1:N open-set identification (QMUL-SurvFace style) and closed-set CMC on embeddings.

Protocol:

* **Gallery.** One prototype per identity: the mean of its *raw* embeddings, then
  L2-normalised (:func:`build_gallery`). Probes are L2-normalised; score = cosine similarity.
* **Ranks.** The rank of a mated probe's true identity is the number of gallery identities
  scoring at least as high as it (itself included): ties count *against* the probe, so a
  model giving every identity the same score gets rank = gallery size, not 1.
* **TPIR at rank k** (default 20) for threshold ``t``: the fraction of mated probes whose true
  identity has rank <= k **and** score > t. **FPIR** at ``t``: the fraction of unmated probes
  whose best score is > t (the per-search FPIR of NIST).
* Two named ways to turn these into numbers (:data:`MODES`):

  ``"reference"`` — the BTNet/SurvFace script: 1000 thresholds evenly spaced (``linspace``)
  from ``min(lowest top-k score of any mated probe, lowest unmated best score)`` to the
  highest unmated best score; TPIR@FPIR=f is read at the grid threshold whose FPIR is closest
  to f (first, i.e. lowest, threshold on ties); AUC = trapezoids of TPIR over FPIR on a linear
  axis (``sklearn.metrics.auc``) across the grid. The grid is computed in float64 (the
  script used float32 tensors).

  ``"exact"`` — no grid, no interpolation: TPIR@FPIR=f is read at the lowest threshold whose
  FPIR does not exceed f, i.e. the ``(⌊f·U⌋ + 1)``-th highest unmated best score (−inf when
  f = 1), for ``U`` unmated probes. AUC is the area under this step function over FPIR in
  [0, 1], which equals the mean over unmated probes ``j`` of TPIR at threshold = the ``j``-th
  highest unmated best score.

* **CMC** (closed set): fraction of mated probes with rank <= r.

Scoring is chunked: at most ``chunk_size × gallery`` scores exist at a time; per probe only
the best score, the true identity's score and rank, the best non-mate score and the k-th
highest score are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ConfigError
from .embeddings import as_embeddings, l2_normalize
from .errors import EmbeddingError

#: Names of the open-set metric modes (see the module docstring).
MODES = ("reference", "exact")
#: SurvFace's FPIR targets.
DEFAULT_FPIRS = (0.3, 0.2, 0.1, 0.01)
#: Default CMC ranks.
DEFAULT_CMC_RANKS = (1, 5, 10, 20)
#: Scores held at once while scoring (``chunk rows × gallery size``).
SCORE_BUDGET = 1 << 24


@dataclass(frozen=True)
class Gallery:
    """Identity prototypes.

    Attributes:
        identities: ``G`` identity labels (sorted, unique).
        prototypes: ``G × D`` float64 L2-normalised mean embeddings.
    """

    identities: np.ndarray
    prototypes: np.ndarray

    def __len__(self) -> int:
        return int(self.identities.shape[0])


def _labels(x: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise EmbeddingError(f"{what}: need one label per embedding ({n}), got shape {arr.shape}")
    return arr


def build_gallery(embeddings: Any, identities: Any) -> Gallery:
    """Gallery prototypes: mean of the raw embeddings of each identity, then L2-normalised."""
    emb = as_embeddings(embeddings, "gallery embeddings")
    ids = _labels(identities, emb.shape[0], "gallery identities")
    uniq, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
    sums = np.add.reduceat(emb[order].astype(np.float64), starts, axis=0)
    means = sums / np.bincount(inverse)[:, None]
    protos = l2_normalize(means, "gallery prototypes (mean embedding per identity)")
    return Gallery(identities=uniq, prototypes=protos.astype(np.float64))


def mate_indices(gallery: Gallery, identities: Any) -> np.ndarray:
    """Gallery row of each probe identity, ``-1`` where the identity is not enrolled."""
    ids = np.asarray(identities).reshape(-1)
    g = gallery.identities
    if (ids.dtype.kind in "US") != (g.dtype.kind in "US"):
        ids, g = ids.astype(str), g.astype(str)
    pos = np.searchsorted(g, ids).clip(0, len(g) - 1)
    return np.where(g[pos] == ids, pos, -1).astype(np.int64)


@dataclass(frozen=True)
class ProbeScores:
    """Per-probe summary of its scores against a gallery.

    Attributes:
        best: highest score over the gallery.
        mate: score of the true identity (nan for unmated probes).
        rank: rank of the true identity, 1 = best, ties against the probe (0 if unmated).
        best_nonmate: highest score over the other identities (−inf if there are none).
        kth: the ``k``-th highest score, i.e. the lowest score of the top-k candidate list
            (mated probes; nan for unmated probes).
        k: the candidate-list length used for ``kth`` (at most the gallery size).
    """

    best: np.ndarray
    mate: np.ndarray
    rank: np.ndarray
    best_nonmate: np.ndarray
    kth: np.ndarray
    k: int

    def __len__(self) -> int:
        return int(self.best.shape[0])

    @property
    def is_mated(self) -> np.ndarray:
        """True for probes whose identity is enrolled."""
        return self.rank > 0

    _FIELDS = ("best", "mate", "rank", "best_nonmate", "kth")

    def subset(self, mask: np.ndarray) -> "ProbeScores":
        """The probes selected by a boolean mask or index array."""
        return ProbeScores(*(getattr(self, f)[mask] for f in self._FIELDS), k=self.k)

    @classmethod
    def concat(cls, parts: Sequence["ProbeScores"]) -> "ProbeScores":
        """Concatenate summaries computed with the same ``k``."""
        if not parts or len({p.k for p in parts}) != 1:
            raise EmbeddingError("concat needs at least one summary, all with the same k")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls._FIELDS),
                   k=parts[0].k)

    @classmethod
    def from_matrix(cls, scores: Any, mate_index: Any, k: int = 20) -> "ProbeScores":
        """Summarise a full ``P × G`` score matrix (small problems, hand-made scores).

        Args:
            scores: similarity of each probe to each gallery identity.
            mate_index: gallery column of each probe's identity, ``-1`` for unmated probes.
            k: candidate-list length.
        """
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] == 0:
            raise EmbeddingError(f"scores must be a P × G matrix with G >= 1, got {s.shape}")
        if not np.isfinite(s).all():
            raise EmbeddingError("scores contain nan/inf")
        idx = _mate_index(mate_index, s.shape)
        return summarise_scores(s, idx, _check_k(k, s.shape[1]))


def _check_k(k: int, gallery_size: int) -> int:
    if int(k) < 1:
        raise ConfigError(f"rank k must be >= 1, got {k}")
    return min(int(k), gallery_size)


def _mate_index(mate_index: Any, shape: tuple[int, int]) -> np.ndarray:
    idx = np.asarray(mate_index).reshape(-1)
    if idx.size != shape[0] or idx.dtype.kind not in "iu":
        raise EmbeddingError(f"mate_index must hold one integer per probe ({shape[0]})")
    if (idx >= shape[1]).any() or (idx < -1).any():
        raise EmbeddingError(f"mate_index must be -1 or a gallery column (< {shape[1]})")
    return idx.astype(np.int64)


def summarise_scores(s: np.ndarray, idx: np.ndarray, k: int) -> ProbeScores:
    """Per-probe statistics of one ``P × G`` score block (``s`` is left unchanged).

    Args:
        s: scores of ``P`` probes against ``G`` gallery identities.
        idx: gallery column of each probe's identity, ``-1`` for unmated probes.
        k: candidate-list length (``1 <= k <= G``).
    """
    n = s.shape[0]
    mated = idx >= 0
    rows = np.flatnonzero(mated)
    mate = np.full(n, np.nan)
    rank = np.zeros(n, dtype=np.int64)
    kth = np.full(n, np.nan)
    best = s.max(axis=1).astype(np.float64)
    nonmate = best.copy()
    if rows.size:
        block = s[rows]
        m = block[np.arange(rows.size), idx[rows]]
        mate[rows] = m
        rank[rows] = (block >= m[:, None]).sum(axis=1)
        kth[rows] = np.partition(block, block.shape[1] - k, axis=1)[:, block.shape[1] - k]
        block[np.arange(rows.size), idx[rows]] = -np.inf
        nonmate[rows] = block.max(axis=1)
    return ProbeScores(best, mate, rank, nonmate, kth, k)


def _probe_array(probes: Any, dim: int) -> np.ndarray:
    """Shape/size checks without copying (values are checked chunk by chunk)."""
    if hasattr(probes, "detach") and hasattr(probes, "cpu"):
        probes = probes.detach().cpu().numpy()
    arr = np.asarray(probes)
    as_embeddings(arr[:1], "probe embeddings", dim=dim)  # dtype, ndim and size checks
    return arr


def iter_score_blocks(gallery: Gallery, probes: Any, *, chunk_size: int | None = None,
                      dtype: Any = np.float32, progress: bool = True,
                      desc: str = "scoring probes") -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(probe slice, scores)`` blocks of cosine similarities, chunk by chunk.

    Each chunk of ``probes`` is checked and L2-normalised on its own (no full-size copy);
    the matrix product runs in ``dtype`` (float32 by default, like the reference).
    """
    from ..progress import progress_bar

    if len(gallery) == 0:
        raise EmbeddingError("the gallery is empty")
    p = _probe_array(probes, gallery.prototypes.shape[1])
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    rows = chunk_size or max(1, SCORE_BUDGET // len(gallery))
    dt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    g_t = np.ascontiguousarray(gallery.prototypes.T, dtype=dt)
    for start in progress_bar(range(0, p.shape[0], rows), desc=desc, unit="chunk", leave=False,
                              disable=not progress):
        stop = min(start + rows, p.shape[0])
        try:
            chunk = l2_normalize(p[start:stop], "probe embeddings")
        except EmbeddingError as exc:
            raise EmbeddingError(f"probe rows {start}-{stop - 1}: {exc}") from None
        yield slice(start, stop), chunk.astype(dt, copy=False) @ g_t


def score_probes(gallery: Gallery, probes: Any, identities: Any = None, *, k: int = 20,
                 chunk_size: int | None = None, dtype: Any = np.float32,
                 progress: bool = True) -> ProbeScores:
    """Score probes against a gallery in chunks and keep the per-probe summary.

    Args:
        gallery: from :func:`build_gallery`.
        probes: ``P × D`` probe embeddings (raw or normalised).
        identities: ``P`` labels; ``None`` (or labels not enrolled) marks unmated probes.
        k: candidate-list length for :attr:`ProbeScores.kth` (the TPIR rank).
        chunk_size: probes per block (default: ``SCORE_BUDGET // gallery size``).
        dtype: ``np.float32`` (default, as the reference) or ``np.float64``.
        progress: show a tqdm bar on terminals.
    """
    if len(gallery) == 0:
        raise EmbeddingError("the gallery is empty")
    k = _check_k(k, len(gallery))
    n = _probe_array(probes, gallery.prototypes.shape[1]).shape[0]
    idx = (np.full(n, -1, np.int64) if identities is None
           else mate_indices(gallery, _labels(identities, n, "probe identities")))
    parts = [summarise_scores(block, idx[sl], k)
             for sl, block in iter_score_blocks(gallery, probes, chunk_size=chunk_size,
                                                dtype=dtype, progress=progress)]
    return ProbeScores.concat(parts)


@dataclass(frozen=True)
class OpenSetResult:
    """Open-set identification numbers of one mode.

    Attributes:
        mode: ``"reference"`` or ``"exact"``.
        rank: the rank k of TPIR.
        tpir: ``{fpir target: TPIR}`` in [0, 1].
        fpir_reached: ``{fpir target: FPIR at the chosen threshold}``.
        thresholds: ``{fpir target: threshold}`` (a probe is accepted when score > threshold).
        auc: area under TPIR(FPIR) in [0, 1] (tables print ×100).
        curve_fpir, curve_tpir, curve_thresholds: the curve (grid points in ``reference``
            mode; one point per distinct unmated score, then −inf, in ``exact`` mode).
        n_mated, n_unmated: probe counts.
    """

    mode: str
    rank: int
    tpir: dict[float, float]
    fpir_reached: dict[float, float]
    thresholds: dict[float, float]
    auc: float
    curve_fpir: np.ndarray = field(repr=False)
    curve_tpir: np.ndarray = field(repr=False)
    curve_thresholds: np.ndarray = field(repr=False)
    n_mated: int
    n_unmated: int

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary (with the curve when ``curves``)."""
        out: dict[str, Any] = {
            "mode": self.mode, "rank": self.rank, "auc": self.auc,
            "tpir": {f"{f:g}": v for f, v in self.tpir.items()},
            "fpir_reached": {f"{f:g}": v for f, v in self.fpir_reached.items()},
            "thresholds": {f"{f:g}": v for f, v in self.thresholds.items()},
            "n_mated": self.n_mated, "n_unmated": self.n_unmated,
        }
        if curves:
            out["curve"] = {"fpir": self.curve_fpir.tolist(), "tpir": self.curve_tpir.tolist(),
                            "thresholds": self.curve_thresholds.tolist()}
        return out


class _Counts:
    """Vectorised TPIR(t) and FPIR(t) from sorted score arrays."""

    def __init__(self, mated: ProbeScores, unmated: ProbeScores, rank: int) -> None:
        self.hits = np.sort(mated.mate[mated.rank <= rank])
        self.unmated = np.sort(unmated.best)
        self.n_mated = len(mated)
        self.n_unmated = len(unmated)

    def tpir(self, t: np.ndarray) -> np.ndarray:
        return (self.hits.size - np.searchsorted(self.hits, t, side="right")) / self.n_mated

    def fpir(self, t: np.ndarray) -> np.ndarray:
        return (self.n_unmated - np.searchsorted(self.unmated, t, side="right")) / self.n_unmated


def _check_open_set(mated: ProbeScores, unmated: ProbeScores) -> None:
    if len(mated) == 0 or not mated.is_mated.all():
        raise EmbeddingError("open-set identification needs mated probes, all of them enrolled "
                             f"({int(mated.is_mated.sum())} of {len(mated)} are)")
    if len(unmated) == 0 or unmated.is_mated.any():
        raise EmbeddingError("open-set identification needs unmated probes, none of them "
                             f"enrolled ({int(unmated.is_mated.sum())} of {len(unmated)} are)")


def open_set_identification(mated: ProbeScores, unmated: ProbeScores, *,
                            fpirs: Sequence[float] = DEFAULT_FPIRS, mode: str = "reference",
                            rank: int | None = None, n_thresholds: int = 1000) -> OpenSetResult:
    """TPIR at rank k for FPIR targets, and the AUC, in a named mode.

    Args:
        mated: scores of mated probes (:func:`score_probes` with identities).
        unmated: scores of unmated probes.
        fpirs: FPIR targets in [0, 1].
        mode: ``"reference"`` or ``"exact"`` (see the module docstring).
        rank: TPIR rank k; default ``mated.k``. The reference mode needs ``rank == mated.k``
            (its threshold grid starts at the lowest top-k score).
        n_thresholds: grid size of the reference mode (1000 in the reference).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown identification mode {mode!r}; accepted: {MODES}")
    _check_open_set(mated, unmated)
    rank = mated.k if rank is None else int(rank)
    if rank < 1:
        raise ConfigError(f"rank must be >= 1, got {rank}")
    if mode == "reference" and rank != mated.k:
        raise ConfigError(f"the reference mode reads TPIR at the scoring rank k={mated.k}; score "
                          f"the probes with k={rank} or use mode='exact'")
    bad = [f for f in fpirs if not 0.0 <= f <= 1.0]
    if bad:
        raise ConfigError(f"FPIR targets must lie in [0, 1], got {bad}")
    counts = _Counts(mated, unmated, rank)
    if mode == "reference":
        return _reference(counts, mated, fpirs, rank, n_thresholds)
    return _exact(counts, fpirs, rank)


def _reference(c: _Counts, mated: ProbeScores, fpirs: Sequence[float], rank: int,
               n_thresholds: int) -> OpenSetResult:
    if n_thresholds < 2:
        raise ConfigError(f"n_thresholds must be >= 2, got {n_thresholds}")
    lo = min(float(np.nanmin(mated.kth)), float(c.unmated[0]))
    grid = np.linspace(lo, float(c.unmated[-1]), n_thresholds)
    tpir, fpir = c.tpir(grid), c.fpir(grid)
    auc = float(-np.trapezoid(tpir, fpir))  # FPIR decreases along the grid
    picks = {f: int(np.argmin(np.abs(fpir - f))) for f in fpirs}
    return OpenSetResult(
        mode="reference", rank=rank, auc=auc,
        tpir={float(f): float(tpir[i]) for f, i in picks.items()},
        fpir_reached={float(f): float(fpir[i]) for f, i in picks.items()},
        thresholds={float(f): float(grid[i]) for f, i in picks.items()},
        curve_fpir=fpir, curve_tpir=tpir, curve_thresholds=grid,
        n_mated=c.n_mated, n_unmated=c.n_unmated)


def _exact(c: _Counts, fpirs: Sequence[float], rank: int) -> OpenSetResult:
    desc = c.unmated[::-1]
    u = desc.size
    ths: dict[float, float] = {}
    for f in fpirs:
        allowed = math.floor(round(f * u, 9))  # false alarms allowed; round() absorbs fp noise
        ths[float(f)] = float(desc[allowed]) if allowed < u else -math.inf
    t_arr = np.asarray(list(ths.values()))
    distinct = np.r_[np.unique(c.unmated)[::-1], -np.inf]
    return OpenSetResult(
        mode="exact", rank=rank, auc=float(c.tpir(desc).mean()),
        tpir=dict(zip(ths, c.tpir(t_arr).tolist())),
        fpir_reached=dict(zip(ths, c.fpir(t_arr).tolist())), thresholds=ths,
        curve_fpir=c.fpir(distinct), curve_tpir=c.tpir(distinct), curve_thresholds=distinct,
        n_mated=c.n_mated, n_unmated=c.n_unmated)


def cmc(mated: ProbeScores, ranks: Sequence[int] = DEFAULT_CMC_RANKS) -> dict[int, float]:
    """Closed-set identification rate at each rank: fraction of mated probes with rank <= r."""
    if len(mated) == 0 or not mated.is_mated.all():
        raise EmbeddingError("CMC needs mated probes whose identities are all enrolled")
    return {int(r): float(np.mean(mated.rank <= r)) for r in ranks}


@dataclass(frozen=True)
class IdentificationResult:
    """Closed-set CMC plus open-set numbers per mode (empty without unmated probes)."""

    cmc: dict[int, float]
    open_set: dict[str, OpenSetResult]
    gallery_size: int

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {"gallery_size": self.gallery_size,
                "cmc": {str(r): v for r, v in self.cmc.items()},
                "open_set": {m: r.to_dict(curves) for m, r in self.open_set.items()}}


def evaluate_identification(gallery_embeddings: Any, gallery_identities: Any,
                            mated_embeddings: Any, mated_identities: Any,
                            unmated_embeddings: Any = None, *, rank: int = 20,
                            fpirs: Sequence[float] = DEFAULT_FPIRS,
                            modes: Sequence[str] = MODES,
                            cmc_ranks: Sequence[int] = DEFAULT_CMC_RANKS,
                            chunk_size: int | None = None, progress: bool = True
                            ) -> IdentificationResult:
    """Run the 1:N protocol on embeddings: prototypes, chunked scoring, CMC and open-set TPIR.

    Every mated probe's identity must be enrolled in the gallery.
    """
    gallery = build_gallery(gallery_embeddings, gallery_identities)
    mated = score_probes(gallery, mated_embeddings, mated_identities, k=rank,
                         chunk_size=chunk_size, progress=progress)
    if not mated.is_mated.all():
        missing = np.asarray(mated_identities)[~mated.is_mated]
        raise EmbeddingError(f"{missing.size} mated probes have identities that are not in the "
                             f"gallery, e.g. {np.unique(missing)[:5].tolist()}")
    open_set: dict[str, OpenSetResult] = {}
    if unmated_embeddings is not None:
        unmated = score_probes(gallery, unmated_embeddings, None, k=rank, chunk_size=chunk_size,
                               progress=progress)
        open_set = {m: open_set_identification(mated, unmated, fpirs=fpirs, mode=m)
                    for m in modes}
    return IdentificationResult(cmc=cmc(mated, cmc_ranks), open_set=open_set,
                                gallery_size=len(gallery))
