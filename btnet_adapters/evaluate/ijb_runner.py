"""IJB-B / IJB-C with a model: align, route, embed, build templates, score (``btnet eval ijb``).

Per image (one row of ``*_name_5pts_score.txt``, file under ``loose_crop/``):

1. **Face size** ``f = 112 / s``, with ``s`` the scale of the least-squares similarity
   transform taking the 5 landmarks onto the 112-px ArcFace template (:func:`face_sizes`):
   the side, in source pixels, of the square the 112-px aligned crop covers. Landmarks that
   already sit on the template give ``f = 112``.
2. **Low resolution** (``max_side=R``, optional): the whole image is first down-scaled
   (``degrade_resize``) by ``R / f`` when ``f > R``, so the face is about ``R`` px.
3. **Routing**: ``r`` = the model's resolution for a ``round(f)²`` face under ``strategy``
   (the aligned crop is square, so the size indicators max/min/avg agree); a model that does
   not route (ONNX, plain callable) gets its input size.
4. **Alignment directly at** ``r`` (:func:`~.align.align_face`, OpenCV bilinear warp).
5. **Embedding**: a BTNet takes that crop at ``r`` (branch or trunk); every baseline takes
   the *same* crop up-sampled to its input size with ``resize`` — both see the same pixels.
6. **Flip TTA**: raw embedding of the crop plus raw embedding of its mirror (mirrored after
   any resizing, as the reference does).
7. **Templates** (:mod:`.ijb`): image feature = normalised sum × detector score; template
   = per-media mean summed over media, normalised; 1:1 TAR@FAR (``closest`` rule) and 1:N
   with ``pseudo_fpir`` (insightface's pooled non-mate threshold) kept apart from
   ``nist_fpir`` (per-search, only where probes are unmated).

``fuse_flip_side=7`` is the reference's "112&7" IJB-C variant: every image is aligned at
the trunk size; its second view is that crop resized to 7 px (``resize``) and mirrored, so
the image's raw feature is ``trunk(crop) + branch7(mirror(crop at 7))``; baselines get the
7-px view up-sampled back. No routing happens in that mode.

1:N uses every gallery list present: each one alone (probes of other subjects are then
unmated, so ``nist_fpir`` exists) and, with two lists, their union ``G1+G2`` (``S1+S2`` for
IJB-B) — insightface's protocol, where every probe is mated.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import BTNetError, ConfigError
from ..resize import CV2_BILINEAR, ResizeSpec, resize_array
from ..routing import STRATEGIES
from .align import align_face, arcface_template
from .embeddings import as_embeddings
from .errors import EmbeddingError, ProtocolFileError
from .ijb import (IJB_FARS, IJB_FPIRS, IJBIdentificationResult, IJBVerificationResult,
                  ijb_identification, ijb_verification, image_features, template_features,
                  template_pair_scores, template_subjects)
from .readers import IJBMeta, read_ijb_meta, require_images
from .report import ijb_row, markdown_table, plot_roc, write_table
from .runners import BTNetEmbedder, Embedder, as_embedder, degrade, load_image

#: How the face size that drives the routing is defined (recorded in the reports).
FACE_SIZE_RULE = ("112 / scale of the 5-point similarity transform onto the 112-px ArcFace "
                  "template (source pixels covered by the aligned crop's side)")


# --------------------------------------------------------------------------- face size
def face_sizes(landmarks: Any) -> np.ndarray:
    """Estimated face side (px) per image from its 5 landmarks (see :data:`FACE_SIZE_RULE`).

    Args:
        landmarks: ``N × 5 × 2`` (or one ``5 × 2``) landmark (x, y) coordinates.

    Returns:
        ``N`` float64 sizes; ``inf`` where the landmarks coincide (no transform exists),
        ``nan`` where they are not finite.
    """
    src = np.asarray(landmarks, dtype=np.float64)
    src = src[None] if src.ndim == 2 else src
    if src.ndim != 3 or src.shape[1:] != (5, 2):
        raise ProtocolFileError(f"expected N × 5 × 2 landmarks, got shape {src.shape}")
    finite = np.isfinite(src).all(axis=(1, 2))
    src = np.where(finite[:, None, None], src, 0.0)
    dst = arcface_template(112)
    sc = src - src.mean(axis=1, keepdims=True)
    dc = dst - dst.mean(axis=0)
    var = (sc ** 2).sum(axis=(1, 2)) / 5.0
    cov = np.einsum("ki,nkj->nij", dc, sc) / 5.0
    sig = np.linalg.svd(cov, compute_uv=False)
    sign = np.where(np.linalg.det(cov) < 0, -1.0, 1.0)  # Umeyama: no reflections
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (sig[:, 0] + sign * sig[:, 1]) / var
        return np.where(finite, np.where(var > 0, 112.0 / scale, np.inf), np.nan)


def _downscale(image: np.ndarray, landmarks: np.ndarray, factor: float,
               spec: ResizeSpec) -> tuple[np.ndarray, np.ndarray]:
    """The image scaled by ``factor`` and its landmarks mapped with it (pixel centres kept)."""
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    scaled = (landmarks + 0.5) * np.array([nw / w, nh / h]) - 0.5
    return resize_array(image, (nh, nw), spec), scaled


# --------------------------------------------------------------------------- meta checks
def _unknown(wanted: np.ndarray, known: np.ndarray) -> np.ndarray:
    return np.setdiff1d(np.unique(wanted), known)


def _check_list(meta: IJBMeta, label: str, templates: np.ndarray, subjects: np.ndarray,
                known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    missing = _unknown(templates, known)
    if missing.size:
        raise ProtocolFileError(f"{label} names {missing.size} templates that have no image in "
                                f"{meta.target.lower()}_face_tid_mid.txt, e.g. "
                                f"{missing[:5].tolist()}")
    try:
        return template_subjects(templates, subjects)
    except BTNetError as exc:
        raise ProtocolFileError(f"{label}: {exc}") from None


def galleries(meta: IJBMeta) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """1:N galleries to score: each list alone, and the union of two lists (insightface's).

    Returns:
        ``{name: (template ids, subject ids)}`` with one row per template; empty without
        probes or galleries.
    """
    if meta.probes is None or not meta.galleries:
        return {}
    known = np.unique(meta.templates)
    out = {}
    for name, (t, s) in meta.galleries.items():
        ids, subj = _check_list(meta, f"gallery {name}", t, s, known)
        uniq, counts = np.unique(subj, return_counts=True)
        if (counts > 1).any():
            raise ProtocolFileError(f"gallery {name} has several templates for subjects "
                                    f"{uniq[counts > 1][:5].tolist()}; 1:N needs one per subject")
        out[name] = (ids, subj)
    if len(out) > 1:
        ids = np.concatenate([v[0] for v in out.values()])
        subj = np.concatenate([v[1] for v in out.values()])
        if np.unique(ids).size != ids.size or np.unique(subj).size != subj.size:
            raise ProtocolFileError(f"galleries {'/'.join(out)} share templates or subjects; "
                                    f"their union cannot be a 1:N gallery")
        order = np.argsort(ids)
        out = {"+".join(out): (ids[order], subj[order]), **out}
    return out


def validate_ijb_meta(meta: IJBMeta, *, check_images: bool = True) -> None:
    """Check an IJB protocol before embedding anything; raise :class:`ProtocolFileError`.

    Checks: something to evaluate (1:1 pairs or 1:N lists); every template named by the
    pairs and 1:N lists has images; one subject per template and per gallery template;
    finite, non-degenerate landmarks; finite, non-negative detector scores; every image
    file exists (``check_images``).
    """
    t = meta.target.lower()
    known = np.unique(meta.templates)
    if meta.pairs is None and not (meta.probes is not None and meta.galleries):
        raise ProtocolFileError(f"nothing to evaluate: no {t}_template_pair_label.txt and no "
                                f"1:N gallery + probe lists")
    if meta.pairs is not None:
        missing = _unknown(np.concatenate(meta.pairs[:2]), known)
        if missing.size:
            raise ProtocolFileError(f"{t}_template_pair_label.txt names {missing.size} templates "
                                    f"that have no image in {t}_face_tid_mid.txt, e.g. "
                                    f"{missing[:5].tolist()}")
    if meta.probes is not None and meta.galleries:
        _check_list(meta, "the probe list", *meta.probes, known)
        galleries(meta)
    sizes = face_sizes(meta.landmarks)
    bad = np.flatnonzero(~np.isfinite(sizes) | ~(sizes > 0))
    if bad.size:
        raise ProtocolFileError(f"{t}_name_5pts_score.txt: {bad.size} images have unusable "
                                f"landmarks (nan/inf or all at one point), e.g. "
                                f"{meta.image_names[bad[:5]].tolist()}")
    scores = np.asarray(meta.face_scores, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores) | (scores < 0))
    if bad.size:
        raise ProtocolFileError(f"{t}_name_5pts_score.txt: detector scores must be finite and "
                                f">= 0; {bad.size} are not, e.g. "
                                f"{meta.image_names[bad[:5]].tolist()}")
    if check_images:
        if not meta.image_dir.is_dir():
            raise ProtocolFileError(f"image folder not found: {meta.image_dir} (IJB images live "
                                    f"in loose_crop/ next to meta/)")
        require_images((meta.image_dir / n for n in meta.image_names), f"{meta.target} images")


# --------------------------------------------------------------------------- embedding
@dataclass(frozen=True)
class _Views:
    """One prepared image: the view embedded as is, and the view embedded mirrored."""

    face_size: float
    first: np.ndarray
    second: np.ndarray | None


@dataclass(frozen=True)
class IJBEmbeddings:
    """Raw image embeddings of an IJB protocol per model, and what each image went through.

    Attributes:
        raw: ``{model name: N × D float32}`` raw embedding of each image plus that of its
            mirrored second view (flip TTA / fused 7-px view), un-normalised.
        face_sizes: ``N`` estimated face sides after any ``max_side`` down-scaling (px).
        sides: ``N`` sides the crops were aligned at (the routing model's choice).
        paths: ``{model name: {path label: number of images}}``, e.g. ``"14px"``, or
            ``"14→112px"`` for a crop aligned at 14 and up-sampled to 112.
        settings: the protocol settings used (recorded in reports).
    """

    raw: dict[str, np.ndarray]
    face_sizes: np.ndarray
    sides: np.ndarray
    paths: dict[str, dict[str, int]]
    settings: dict[str, Any] = field(default_factory=dict)


def _named_embedders(model: Any, baselines: Mapping[str, Any] | Sequence[Any]
                     ) -> list[Embedder]:
    items = baselines.items() if isinstance(baselines, Mapping) else [(None, b) for b in baselines]
    out = [as_embedder(model)] + [as_embedder(b, n, upsample=True) for n, b in items]
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"models need distinct names, got {names}; pass baselines as a "
                          f"{{name: model}} mapping")
    return out


class _Preparer:
    """Load → (down-scale) → face size → route → align; shared by every model."""

    def __init__(self, meta: IJBMeta, router: Embedder, strategy: str, max_side: int | None,
                 resize: ResizeSpec, degrade_resize: ResizeSpec, flip: bool,
                 fuse: tuple[int, int] | None) -> None:
        self.meta, self.router, self.strategy, self.max_side = meta, router, strategy, max_side
        self.resize, self.degrade_resize = resize, degrade_resize
        self.flip, self.fuse = flip, fuse

    def side(self, size: float) -> int:
        s = max(1, int(round(size)))
        return int(self.router.target_side(s, s, "max", self.strategy))

    def __call__(self, i: int) -> _Views:
        name = str(self.meta.image_names[i])
        try:
            image = load_image(self.meta.image_dir / name)
            lm = np.asarray(self.meta.landmarks[i], dtype=np.float64)
            size = float(face_sizes(lm)[0])
            if self.max_side is not None and size > self.max_side:
                image, lm = _downscale(image, lm, self.max_side / size, self.degrade_resize)
                size = float(face_sizes(lm)[0])
            if self.fuse is not None:  # (trunk side, branch side)
                crop = align_face(image, lm, self.fuse[0])
                return _Views(size, crop, degrade(crop, self.fuse[1], self.resize))
            crop = align_face(image, lm, self.side(size))
        except BTNetError as exc:
            raise ProtocolFileError(f"image {name} (row {i + 1}): {exc}") from None
        return _Views(size, crop, crop if self.flip else None)


def _path_label(src: int, dst: int) -> str:
    return f"{src}px" if src == dst else f"{src}→{dst}px"


def _embed_chunk(emb: Embedder, views: list[_Views], resize: ResizeSpec, strategy: str,
                 batch_size: int, paths: Counter) -> np.ndarray:
    """Raw embedding of each image's first view plus its mirrored second view."""

    def at_side(view: np.ndarray) -> tuple[np.ndarray, str]:
        src = view.shape[0]
        side = emb.target_side(src, src, "max", strategy)
        return degrade(view, side, resize), _path_label(src, side)

    inputs: dict[int, list[tuple[int, np.ndarray]]] = {}
    for j, v in enumerate(views):
        x, label = at_side(v.first)
        inputs.setdefault(x.shape[0], []).append((j, x))
        if v.second is not None:
            y, second = (x, label) if v.second is v.first else at_side(v.second)
            inputs.setdefault(y.shape[0], []).append((j, np.ascontiguousarray(y[:, ::-1])))
            if v.second is not v.first:
                label = f"{label} + mirrored {second}"
        paths[label] += 1
    out: np.ndarray | None = None
    for items in inputs.values():
        for s in range(0, len(items), batch_size):
            part = items[s:s + batch_size]
            raw = emb.embed_pixels(np.stack([x for _, x in part]))
            if out is None:
                out = np.zeros((len(views), raw.shape[1]), dtype=np.float32)
            np.add.at(out, [j for j, _ in part], raw)  # one image may have 2 views in a batch
    assert out is not None
    return out


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def embed_ijb(model: Any, meta: IJBMeta, *, baselines: Mapping[str, Any] | Sequence[Any] = (),
              strategy: str = "ceil", max_side: int | None = None,
              resize: ResizeSpec = CV2_BILINEAR, degrade_resize: ResizeSpec | None = None,
              flip: bool = True, fuse_flip_side: int | None = None, batch_size: int = 64,
              workers: int = 0, progress: bool = True) -> IJBEmbeddings:
    """Embed every IJB image with a model (and up-sampling baselines), in chunks.

    Images are loaded and aligned once per chunk of ``batch_size`` and shared by all models
    (see the module docstring for the per-image steps).

    Args:
        model: a BTNet (routes each image by its face size), or an :class:`~.runners.Embedder`,
            torch callable or ONNX session (everything aligned at its input size).
        meta: the protocol (:func:`~.readers.read_ijb_meta`).
        baselines: up-sampling baselines, ``{name: model}`` or a sequence of named
            :class:`~.runners.Embedder` objects; they take the routed crop up-sampled.
        strategy: routing strategy (``ceil``, ``near``, ``floor``).
        max_side: down-scale each image first so its face is at most this many px.
        resize: resize of crops to a model's side (baselines, fused 7-px view); reference:
            OpenCV bilinear without antialiasing.
        degrade_resize: resize for the ``max_side`` down-scaling (default: ``resize``).
        flip: flip TTA (second view = mirrored crop).
        fuse_flip_side: the reference's ``112&7``: second view = crop at this branch side,
            mirrored (needs a BTNet with that branch); replaces ``flip``.
        batch_size: images per chunk and per forward pass.
        workers: threads loading and aligning images (0: in the calling thread).
        progress: tqdm bar over images.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; accepted: {', '.join(STRATEGIES)}")
    if max_side is not None and int(max_side) < 1:
        raise ConfigError(f"max_side must be >= 1 px, got {max_side}")
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"need batch_size >= 1 and workers >= 0, got {batch_size}, {workers}")
    embedders = _named_embedders(model, baselines)
    router = embedders[0]
    if fuse_flip_side is not None and not (
            isinstance(router, BTNetEmbedder)
            and int(fuse_flip_side) in router.model.branch_resolutions):
        have = getattr(getattr(router, "model", None), "branch_resolutions", ())
        raise ConfigError(f"fusing the mirrored {fuse_flip_side}-px view needs a BTNet with a "
                          f"{fuse_flip_side}-px branch as the model; {router.name} has branches "
                          f"{tuple(have)}")
    fuse = (None if fuse_flip_side is None
            else (int(router.model.input_size), int(fuse_flip_side)))  # type: ignore[attr-defined]
    prep = _Preparer(meta, router, strategy, None if max_side is None else int(max_side), resize,
                     degrade_resize or resize, flip, fuse)
    n = len(meta.image_names)
    raw: dict[str, np.ndarray] = {}
    paths = {e.name: Counter() for e in embedders}
    sizes, sides = np.empty(n), np.empty(n, dtype=np.int64)
    from ..progress import progress_bar

    pool = ThreadPoolExecutor(workers) if workers else None
    bar = progress_bar(total=n, desc=f"{meta.target} images", unit="img", disable=not progress)
    try:
        for rows in _chunks(n, batch_size):
            views = list(pool.map(prep, rows) if pool else map(prep, rows))
            sizes[rows.start:rows.stop] = [v.face_size for v in views]
            sides[rows.start:rows.stop] = [v.first.shape[0] for v in views]
            for e in embedders:
                out = _embed_chunk(e, views, resize, strategy, batch_size, paths[e.name])
                if e.name not in raw:
                    raw[e.name] = np.empty((n, out.shape[1]), dtype=np.float32)
                raw[e.name][rows.start:rows.stop] = out
            bar.update(len(rows))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    settings = {"target": meta.target, "strategy": strategy, "max_side": max_side,
                "resize": str(resize), "degrade_resize": str(degrade_resize or resize),
                "flip": flip if fuse_flip_side is None else "fused",
                "fuse_flip_side": fuse_flip_side, "face_size": FACE_SIZE_RULE}
    ordered = {k: dict(sorted(v.items(), key=lambda kv: int(re.match(r"\d+", kv[0]).group())))
               for k, v in paths.items()}  # by aligned side
    return IJBEmbeddings(raw, sizes, sides, ordered, settings)


# --------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class IJBScores:
    """IJB numbers of one model.

    Attributes:
        name: model name.
        template_ids: sorted ids of all templates.
        template_feats: their ``T × D`` normalised features.
        pair_scores: cosine score per 1:1 pair (``None`` without pairs).
        verification: 1:1 TAR@FAR and ROC (``None`` without pairs).
        identification: ``{gallery name: 1:N result}`` (see :func:`galleries`).
    """

    name: str
    template_ids: np.ndarray = field(repr=False)
    template_feats: np.ndarray = field(repr=False)
    pair_scores: np.ndarray | None = field(repr=False)
    verification: IJBVerificationResult | None
    identification: dict[str, IJBIdentificationResult]


def score_ijb(raw: Any, meta: IJBMeta, *, name: str = "model", score_weight: bool = True,
              normalize: bool = True, fars: Sequence[float] = IJB_FARS,
              fpirs: Sequence[float] = IJB_FPIRS, progress: bool = True) -> IJBScores:
    """Score raw image embeddings (flip views already summed) on an IJB protocol.

    Args:
        raw: ``N × D`` raw embeddings, rows in the order of ``meta.image_names``.
        meta: the protocol.
        name: model name.
        score_weight: multiply image features by the detector score (reference: yes).
        normalize: L2-normalise image features first (reference: yes; no keeps the norm as
            a quality weight, insightface's "norm score").
        fars: 1:1 FAR targets.
        fpirs: 1:N FPIR targets (for ``pseudo_fpir`` and ``nist_fpir``).
        progress: tqdm bars while scoring 1:N.
    """
    raw = as_embeddings(raw, "image embeddings")
    if raw.shape[0] != len(meta.image_names):
        raise EmbeddingError(f"{raw.shape[0]} embeddings for {len(meta.image_names)} images")
    feats = image_features(raw, face_scores=meta.face_scores if score_weight else None,
                           normalize=normalize)
    ids, tfeats = template_features(feats, meta.templates, meta.medias)
    pair_scores = verification = None
    if meta.pairs is not None:
        t1, t2, labels = meta.pairs
        pair_scores = template_pair_scores(ids, tfeats, t1, t2)
        verification = ijb_verification(pair_scores, labels, fars=fars)
    identification = {}
    todo = galleries(meta)
    if todo:
        p_ids, p_subj = template_subjects(*meta.probes)  # type: ignore[misc]
        probe_feats = tfeats[np.searchsorted(ids, p_ids)]
        for gname, (g_ids, g_subj) in todo.items():
            identification[gname] = ijb_identification(
                probe_feats, p_subj, tfeats[np.searchsorted(ids, g_ids)], g_subj, fpirs=fpirs,
                progress=progress)
    return IJBScores(name, ids, tfeats, pair_scores, verification, identification)


# --------------------------------------------------------------------------- run + report
@dataclass(frozen=True)
class IJBRun:
    """A full IJB evaluation: embeddings and scores per model, plus report rows.

    Attributes:
        embeddings: what :func:`embed_ijb` returned.
        scores: :class:`IJBScores` per model, the model first.
        settings: protocol settings (embedding and scoring), recorded in the reports.
    """

    embeddings: IJBEmbeddings
    scores: list[IJBScores]
    settings: dict[str, Any]

    def _paths(self, name: str) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.embeddings.paths[name].items())

    def verification_rows(self) -> list[dict]:
        """1:1 table rows: TAR@FAR per model (percent)."""
        return [ijb_row(s.name, s.verification, paths=self._paths(s.name),
                        pairs=s.verification.n_genuine + s.verification.n_impostor)
                for s in self.scores if s.verification is not None]

    def identification_rows(self) -> list[dict]:
        """1:N table rows: CMC, TPIR@pseudo_fpir and TPIR@nist_fpir per model and gallery."""
        return [ijb_row(s.name, identification=r, gallery=g, mated=r.n_mated,
                        unmated=r.n_unmated, paths=self._paths(s.name))
                for s in self.scores for g, r in s.identification.items()]

    def write(self, out: str | os.PathLike[str]) -> tuple[str, list[Path]]:
        """Write ``<target>_verification`` / ``_identification`` tables (md + json) and the ROC
        plot under ``out``; return the Markdown text and the written paths."""
        out = Path(out)
        base = self.settings["target"].lower()
        text, written = "", []
        for rows, kind, title in (
                (self.verification_rows(), "verification", "1:1 verification (TAR@FAR)"),
                (self.identification_rows(), "identification",
                 "1:N identification (pseudo_fpir: insightface's pooled non-mate threshold; "
                 "nist_fpir: per-search, unmated probes)")):
            if rows:
                title = f"{self.settings['target']} {title}"
                written += write_table(rows, out / f"{base}_{kind}", title=title,
                                       meta=self.settings)
                text += markdown_table(rows, title=title) + "\n"
        curves = {s.name: (s.verification.roc.fpr, s.verification.roc.tpr)
                  for s in self.scores if s.verification is not None}
        if curves:
            written.append(plot_roc(curves, out / f"{base}_roc.png",
                                    title=f"{self.settings['target']} 1:1 ROC"))
        return text, written


def load_ijb(root: str | os.PathLike[str], target: str = "IJBC", *,
             image_dir: str | os.PathLike[str] | None = None,
             check_images: bool = True) -> IJBMeta:
    """Read an IJB folder (``meta/`` + ``loose_crop/``) and validate it (:func:`validate_ijb_meta`).

    Args:
        root: the IJB folder.
        target: ``"IJBC"`` or ``"IJBB"``.
        image_dir: read images from here instead of ``loose_crop/``.
        check_images: check that every image file exists.
    """
    meta = read_ijb_meta(root, target)
    if image_dir is not None:
        meta = dataclasses.replace(meta, image_dir=Path(image_dir))
    validate_ijb_meta(meta, check_images=check_images)
    return meta


def run_ijb(model: Any, ijb: str | os.PathLike[str] | IJBMeta, *, target: str = "IJBC",
            baselines: Mapping[str, Any] | Sequence[Any] = (), image_dir: str | None = None,
            validate: bool = True, score_weight: bool = True, normalize: bool = True,
            fars: Sequence[float] = IJB_FARS, fpirs: Sequence[float] = IJB_FPIRS,
            progress: bool = True, **embed_kwargs: Any) -> IJBRun:
    """Run IJB-B / IJB-C 1:1 and 1:N with a model and optional up-sampling baselines.

    Args:
        model: a BTNet or any model :func:`~.runners.as_embedder` accepts.
        ijb: the IJB folder (holding ``meta/`` and ``loose_crop/``) or an :class:`IJBMeta`.
        target: ``"IJBC"`` or ``"IJBB"`` (when ``ijb`` is a folder).
        baselines: see :func:`embed_ijb`.
        image_dir: read images from here instead of ``loose_crop/``.
        validate: check the protocol first (skip only for an already validated ``IJBMeta``).
        score_weight, normalize, fars, fpirs: see :func:`score_ijb`.
        progress: tqdm bars.
        **embed_kwargs: :func:`embed_ijb` options (``strategy``, ``max_side``, ``resize``,
            ``degrade_resize``, ``flip``, ``fuse_flip_side``, ``batch_size``, ``workers``).
    """
    if isinstance(ijb, IJBMeta):
        meta = ijb if image_dir is None else dataclasses.replace(ijb, image_dir=Path(image_dir))
        if validate:
            validate_ijb_meta(meta)
    else:
        meta = load_ijb(ijb, target, image_dir=image_dir)
    emb = embed_ijb(model, meta, baselines=baselines, progress=progress, **embed_kwargs)
    scores = [score_ijb(raw, meta, name=name, score_weight=score_weight, normalize=normalize,
                        fars=fars, fpirs=fpirs, progress=progress)
              for name, raw in emb.raw.items()]
    settings = {**emb.settings, "images": len(meta.image_names), "score_weight": score_weight,
                "normalize": normalize, "far_rule": "closest",
                "galleries": list(scores[0].identification)}
    return IJBRun(emb, scores, settings)
