"""Model-driven protocol runners: embed the protocol images with a model, then score them.

An :class:`Embedder` turns batches of square uint8 RGB images into raw embeddings and says
which side each image must be resized to:

* :class:`BTNetEmbedder` routes every image to one of the model's resolutions (a low-res
  image reaches the branch of its native side ``r`` unresized; the trunk takes 112);
* :class:`UpsamplingEmbedder` (a torch callable on normalised ``B×3×112×112`` input) and
  :class:`OnnxEmbedder` (an onnxruntime session) take every image up-sampled back to their
  input size — the up-sampling baseline — through the same code.

Resizing always uses the protocol's explicit :class:`~btnet_adapters.resize.ResizeSpec`:
verification degrades the image one step from its original (112) to ``r``, then (baseline
only) up-samples it back to 112 with the same spec; identification resizes each image to its
routed side. Embeddings are cached per ``(image, degraded side)`` so ``112&7`` and ``7&7``
embed the 112-px images once.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np
import torch

from ..data.degrade import DegradationSpec
from ..errors import ConfigError, InputImageError
from ..resize import CV2_BILINEAR, PIL_BICUBIC, ResizeSpec, resize_array
from ..routing import INDICATORS, STRATEGIES
from .embeddings import flip_tta
from .errors import EmbeddingError, ProtocolFileError
from .identification import DEFAULT_FPIRS, MODES, IdentificationResult, evaluate_identification
from .readers import IdentityList, PairList, VerificationBin, decode_image
from .report import identification_row, verification_row
from .settings import ResolutionSetting, parse_setting
from .verification import VerificationResult, evaluate_verification

#: The multi-resolution verification settings of the paper.
DEFAULT_SETTINGS = ("112&7", "112&14", "112&28", "7&7", "14&14", "28&28", "112&112")


# --------------------------------------------------------------------------- embedders
class Embedder(ABC):
    """Base class: raw embeddings of square uint8 image batches, plus the side each image needs.

    Subclasses implement :meth:`target_side` and :meth:`_forward`. :meth:`embed_pixels`
    checks that every batch has the same embedding size (and the declared one, if any).
    """

    #: name used in tables and plots
    name: str
    #: True when the model routes images to several resolutions (a BTNet)
    routes: bool = False

    def __init__(self, name: str, embed_dim: int | None = None) -> None:
        self.name = name
        self.embed_dim = embed_dim

    @abstractmethod
    def target_side(self, width: int, height: int, indicator: str = "max",
                    strategy: str = "ceil") -> int:
        """Side (px) an image of ``width``×``height`` is resized to before embedding."""

    @abstractmethod
    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        """Raw embeddings of a uint8 ``B×S×S×3`` batch (any array-like ``B×D``)."""

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Raw embeddings ``(B, D)`` float32 of a ``B×S×S×3`` uint8 RGB batch."""
        if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.dtype != np.uint8:
            raise InputImageError(f"{self.name}: expected a B×S×S×3 uint8 batch, got "
                                  f"{pixels.dtype} {pixels.shape}")
        out = np.asarray(self._forward(pixels), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != pixels.shape[0]:
            raise EmbeddingError(f"{self.name} returned shape {out.shape} for a batch of "
                                 f"{pixels.shape[0]} images; expected (batch, embedding size)")
        if self.embed_dim is None:
            self.embed_dim = int(out.shape[1])
        elif out.shape[1] != self.embed_dim:
            raise EmbeddingError(f"{self.name} returned {out.shape[1]}-d embeddings but "
                                 f"{self.embed_dim}-d are expected (declared or returned "
                                 f"before); every embedding of a run must come from one space")
        return out


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()


class BTNetEmbedder(Embedder):
    """A BTNet: each image is routed to a resolution and goes to that branch (or the trunk).

    Args:
        model: the BTNet (put in eval mode here).
        name: table name (default ``"btnet"``).
        device: where to run (default: the model's device).
    """

    routes = True

    def __init__(self, model: Any, name: str = "btnet", device: str | None = None) -> None:
        super().__init__(name, int(model.embed_dim))
        self.model = model.eval()
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)

    def target_side(self, width: int, height: int, indicator: str = "max",
                    strategy: str = "ceil") -> int:
        return self.model.route(width, height, indicator, strategy)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        x = self.model.normalize(_to_tensor(pixels).to(self.device))
        return self.model(x).float().cpu().numpy()


def _default_normalize(x: torch.Tensor) -> torch.Tensor:
    return (x / 255.0 - 0.5) / 0.5


class UpsamplingEmbedder(Embedder):
    """Any torch callable ``normalised B×3×S×S → B×D``: every image is resized to ``S``.

    This is the up-sampling baseline: low-resolution images are brought back to the model's
    input size with the protocol's resize spec.

    Args:
        fn: the model (a ``torch.nn.Module`` is put in eval mode).
        name: table name.
        input_size: the side ``S`` the model takes (112).
        normalize: pixels in [0, 255] → model input (default ``(x/255 − 0.5)/0.5``).
        embed_dim: the expected embedding size (checked), or None to take the first batch's.
        device: where to run the inputs.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str = "baseline", *,
                 input_size: int = 112,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 embed_dim: int | None = None, device: str | None = None) -> None:
        super().__init__(name, embed_dim)
        if isinstance(fn, torch.nn.Module):
            fn.eval()
        self.fn = fn
        self.input_size = int(input_size)
        self.normalize = normalize or _default_normalize
        self.device = torch.device(device or "cpu")

    @classmethod
    def from_btnet(cls, model: Any, name: str = "baseline") -> "UpsamplingEmbedder":
        """A BTNet used as an up-sampling baseline: its trunk path at ``model.input_size``."""
        device = next(model.parameters()).device
        return cls(model, name, input_size=model.input_size, normalize=model.normalize,
                   embed_dim=int(model.embed_dim), device=str(device))

    def target_side(self, width: int, height: int, indicator: str = "max",
                    strategy: str = "ceil") -> int:
        return self.input_size

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        out = self.fn(self.normalize(_to_tensor(pixels).to(self.device)))
        if not torch.is_tensor(out):
            raise EmbeddingError(f"{self.name} returned {type(out).__name__}, not a tensor")
        return out.float().cpu().numpy()


class OnnxEmbedder(Embedder):
    """An onnxruntime session taking normalised ``B×3×S×S`` float32 input (up-sampling baseline).

    Args:
        session: an ``onnxruntime.InferenceSession`` (first input, first output are used).
        name: table name.
        input_size: ``S``; default: the session's static input side, else 112.
        mean, std: normalisation of pixels in [0, 255]: ``(x − mean) / std``.
    """

    def __init__(self, session: Any, name: str = "onnx", *, input_size: int | None = None,
                 mean: float = 127.5, std: float = 127.5) -> None:
        inp = session.get_inputs()[0]
        out_shape = session.get_outputs()[0].shape
        declared = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
        super().__init__(name, declared)
        side = inp.shape[-1] if len(inp.shape) == 4 and isinstance(inp.shape[-1], int) else None
        self.input_size = int(input_size or side or 112)
        if side is not None and side != self.input_size:
            raise ConfigError(f"{name}: the ONNX model takes {side}×{side} inputs, not "
                              f"{self.input_size}")
        self.session, self.input_name = session, inp.name
        self.mean, self.std = float(mean), float(std)

    def target_side(self, width: int, height: int, indicator: str = "max",
                    strategy: str = "ceil") -> int:
        return self.input_size

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        x = (pixels.transpose(0, 3, 1, 2).astype(np.float32) - self.mean) / self.std
        return self.session.run(None, {self.input_name: x})[0]


def as_embedder(model: Any, name: str | None = None, *, upsample: bool = False) -> Embedder:
    """Wrap a BTNet, a torch callable or an onnxruntime session as an :class:`Embedder`.

    Args:
        model: an :class:`Embedder` (returned as is), a BTNet, a torch callable, or an
            onnxruntime session.
        name: table name.
        upsample: use a BTNet as an up-sampling baseline (its trunk at 112) instead of routing.
    """
    from ..model import BTNet

    if isinstance(model, Embedder):
        return model
    if isinstance(model, BTNet):
        if upsample:
            return UpsamplingEmbedder.from_btnet(model, name or "baseline")
        return BTNetEmbedder(model, name or "btnet")
    if hasattr(model, "get_inputs") and hasattr(model, "run"):
        return OnnxEmbedder(model, name or "onnx")
    if callable(model):
        return UpsamplingEmbedder(model, name or "baseline")
    raise ConfigError(f"cannot evaluate a {type(model).__name__}: give a BTNet, a torch "
                      f"callable or an onnxruntime InferenceSession")


# --------------------------------------------------------------------------- embedding loop
def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``H×W×3`` RGB uint8 (grey images become RGB)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ProtocolFileError(f"cannot read image {path}: {exc}") from None
    return decode_image(data, what=str(path))


def degrade(image: np.ndarray, side: int | None, spec: ResizeSpec) -> np.ndarray:
    """The image resized in one step to ``side``×``side`` with ``spec`` (None: unchanged)."""
    if side is None or image.shape[:2] == (side, side):
        return image
    return resize_array(image, side, spec)


class _Bar:
    """A progress bar over images (log lines when stderr is not a terminal), opened lazily (so
    cached runs show nothing)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        from ..progress import progress_bar

        self.bar = progress_bar(total=total, desc=desc, unit="img", disable=not enabled)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _embed_batch(embedder: Embedder, images: list[np.ndarray], flip: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    batch = np.stack(images)
    raw = embedder.embed_pixels(batch)
    flipped = embedder.embed_pixels(np.ascontiguousarray(batch[:, :, ::-1])) if flip else None
    return raw, flipped


def degrade_image(image: np.ndarray, side: int | None, resize: ResizeSpec, degradation: DegradationSpec | None,
                  key: Hashable) -> np.ndarray:
    """``image`` brought to ``side`` px: resized with ``resize``, or, with a ``degradation``,
    degraded by it with a generator seeded by ``(side, key)`` (the same pixels on every run and
    for every model). Unchanged when ``side`` is ``None`` or already the image's size."""
    if degradation is None or side is None or image.shape[:2] == (side, side):
        return degrade(image, side, resize)
    rng = np.random.default_rng([side, zlib.crc32(str(key).encode("utf-8"))])
    return degradation.down_array(image, side, rng)


def embed_images(embedder: Embedder, keys: Sequence[Hashable],
                 load: Callable[[Hashable], np.ndarray], *, degrade_to: int | None = None,
                 resize: ResizeSpec = CV2_BILINEAR, indicator: str = "max",
                 strategy: str = "ceil", flip: bool = False, batch_size: int = 64,
                 bar: Any = None, degradation: DegradationSpec | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """Embed images: load, degrade to ``degrade_to`` (optional; with ``degradation`` as
    :func:`degrade_image` says), resize to the routed side.

    Images are loaded ``batch_size`` at a time, grouped by target side and embedded; with
    ``flip`` the mirrored images (after resizing) are embedded too.

    Returns:
        ``(raw, raw_flipped or None, target side per image)``, rows in ``keys`` order.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    raws: list[np.ndarray | None] = [None] * len(keys)
    flips: list[np.ndarray | None] = [None] * len(keys)
    sides = [0] * len(keys)
    for start in range(0, len(keys), batch_size):
        groups: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i in range(start, min(start + batch_size, len(keys))):
            img = degrade_image(load(keys[i]), degrade_to, resize, degradation, keys[i])
            side = embedder.target_side(img.shape[1], img.shape[0], indicator, strategy)
            sides[i] = side
            groups.setdefault(side, []).append((i, degrade(img, side, resize)))
        for items in groups.values():
            raw, flipped = _embed_batch(embedder, [im for _, im in items], flip)
            for j, (i, _) in enumerate(items):
                raws[i] = raw[j]
                flips[i] = flipped[j] if flipped is not None else None
        if bar is not None:
            bar.update(min(start + batch_size, len(keys)) - start)
    raw_all = np.stack(raws)  # type: ignore[arg-type]
    return raw_all, (np.stack(flips) if flip else None), sides  # type: ignore[arg-type]


# --------------------------------------------------------------------------- verification
@dataclass
class VerificationRun:
    """Result of :func:`run_verification`.

    Attributes:
        name: the embedder's name.
        results: ``{setting string: VerificationResult}`` in setting order.
        rows: table rows (:func:`~.report.verification_row`), percent.
        paths: ``{setting string: (side the first image is embedded at, side of the second)}``.
    """

    name: str
    results: dict[str, VerificationResult]
    rows: list[dict]
    paths: dict[str, tuple[int, int]] = field(default_factory=dict)


def _pair_source(pairs: PairList | VerificationBin
                 ) -> tuple[list[Hashable], list[Hashable], Callable[[Hashable], np.ndarray]]:
    if isinstance(pairs, VerificationBin):
        n = len(pairs)
        return list(range(0, 2 * n, 2)), list(range(1, 2 * n, 2)), pairs.decode
    if isinstance(pairs, PairList):
        return list(pairs.paths1), list(pairs.paths2), load_image
    raise ConfigError(f"pairs must be a PairList or a VerificationBin, got {type(pairs).__name__}")


def _settings(settings: Iterable[str | ResolutionSetting]) -> list[ResolutionSetting]:
    out = [s if isinstance(s, ResolutionSetting) else parse_setting(s) for s in settings]
    if not out:
        raise ConfigError("no verification settings given (e.g. '112&7,7&7')")
    return out


def run_verification(embedder: Any, pairs: PairList | VerificationBin,
                     settings: Iterable[str | ResolutionSetting] = DEFAULT_SETTINGS, *,
                     resize: ResizeSpec = CV2_BILINEAR, flip: bool = True, batch_size: int = 64,
                     progress: bool = True, name: str | None = None,
                     degradation: DegradationSpec | None = None, **metric_kwargs: Any) -> VerificationRun:
    """Run the multi-resolution 1:1 protocol with a model.

    Per setting ``r1&r2``: the second image of each pair is resized in one step from its
    original size to ``r2``×``r2`` with ``resize`` (reference: OpenCV bilinear, no
    antialiasing), the first to ``r1`` (unchanged when it already has that size). A BTNet
    embeds each image at its side's branch; other models get it up-sampled back to their
    input size with the same spec. Flip TTA (after resizing): raw embeddings of the image and
    its mirror are summed, then normalised. Scored by :func:`evaluate_verification` with the
    protocol's folds (``pairs.folds``; contiguous folds for ``.bin`` sets).

    Args:
        embedder: an :class:`Embedder`, a BTNet, a torch callable or an ONNX session.
        pairs: a :class:`PairList` (TSV / LFW pairs) or a :class:`VerificationBin`.
        settings: ``"r1&r2"`` strings or :class:`ResolutionSetting` objects.
        resize: the protocol's resize spec.
        flip: flip TTA.
        batch_size: images per forward pass.
        progress: tqdm bar while embedding.
        name: table name (default: the embedder's).
        degradation: degrade images brought below their size with this (seeded per image,
            e.g. :data:`~btnet_adapters.data.degrade.REALISTIC_DEGRADATION`) instead of
            resizing them with ``resize``; routing and up-sampling still use ``resize``.
        **metric_kwargs: passed to :func:`evaluate_verification` (``fars``, ``far_rule`` …).
    """
    emb = as_embedder(embedder, name)
    name = name or emb.name
    todo = _settings(settings)
    keys1, keys2, load = _pair_source(pairs)
    folds = getattr(pairs, "folds", None)
    cache: dict[tuple[Hashable, int], tuple[np.ndarray, np.ndarray | None, int]] = {}
    need = {(k, s.r1) for s in todo for k in keys1} | {(k, s.r2) for s in todo for k in keys2}
    bar = _Bar(len(need), f"embedding ({name})", progress)
    try:
        results, rows, paths = {}, [], {}
        for s in todo:
            for keys, side in ((keys1, s.r1), (keys2, s.r2)):
                missing = list(dict.fromkeys(k for k in keys if (k, side) not in cache))
                if missing:
                    raw, flipped, targets = embed_images(
                        emb, missing, load, degrade_to=side, resize=resize, flip=flip,
                        batch_size=batch_size, bar=bar, degradation=degradation)
                    for j, k in enumerate(missing):
                        cache[(k, side)] = (raw[j], flipped[j] if flipped is not None else None,
                                            targets[j])
            e1, t1 = _gather(cache, keys1, s.r1, flip)
            e2, t2 = _gather(cache, keys2, s.r2, flip)
            res = evaluate_verification(e1, e2, pairs.issame, folds=folds, **metric_kwargs)
            results[str(s)] = res
            paths[str(s)] = (t1, t2)
            rows.append(verification_row(name, str(s), res, path=f"{t1}&{t2}"))
    finally:
        bar.close()
    return VerificationRun(name=name, results=results, rows=rows, paths=paths)


def _gather(cache: dict, keys: Sequence[Hashable], side: int, flip: bool
            ) -> tuple[np.ndarray, int]:
    entries = [cache[(k, side)] for k in keys]
    raw = np.stack([e[0] for e in entries])
    targets = {e[2] for e in entries}
    if len(targets) != 1:
        raise InputImageError(f"the images at {side} px went to different paths {sorted(targets)};"
                              f" verification images must all have one size")
    emb = flip_tta(raw, np.stack([e[1] for e in entries])) if flip else raw
    return emb, targets.pop()


# --------------------------------------------------------------------------- identification
@dataclass
class IdentificationRun:
    """Result of :func:`run_identification`.

    Attributes:
        name: the embedder's name.
        result: CMC and open-set numbers.
        rows: one table row per mode (:func:`~.report.identification_row`), percent.
        routes: ``{side: number of probe images embedded at that side}``.
    """

    name: str
    result: IdentificationResult
    rows: list[dict]
    routes: dict[int, int]


class _IdentCache:
    """Raw embeddings per ``(list, image index, target side)``, shared by routing runs."""

    def __init__(self, embedder: Embedder, lists: dict[str, IdentityList],
                 degrade_to: dict[str, int | None], resize: ResizeSpec, flip: bool,
                 batch_size: int, progress: bool, degradation: DegradationSpec | None = None) -> None:
        self.embedder, self.lists, self.degrade_to, self.degradation = embedder, lists, degrade_to, degradation
        self.resize, self.flip, self.batch_size, self.progress = resize, flip, batch_size, progress
        self.store: dict[tuple[str, int, int], np.ndarray] = {}
        self.sizes: dict[str, list[tuple[int, int]]] = {}

    def _size(self, which: str) -> list[tuple[int, int]]:
        """(width, height) of every image of a list after degrading (reads headers only)."""
        if which not in self.sizes:
            from PIL import Image

            side = self.degrade_to[which]
            sizes = []
            for p in self.lists[which].paths:
                if side is not None:
                    sizes.append((side, side))
                    continue
                try:
                    with Image.open(p) as im:
                        sizes.append(im.size)
                except OSError as exc:
                    raise ProtocolFileError(f"cannot read image {p}: {exc}") from None
            self.sizes[which] = sizes
        return self.sizes[which]

    def embeddings(self, which: str, indicator: str, strategy: str
                   ) -> tuple[np.ndarray, list[int]]:
        sizes = self._size(which)
        sides = [self.embedder.target_side(w, h, indicator, strategy) for w, h in sizes]
        missing = [i for i, s in enumerate(sides) if (which, i, s) not in self.store]
        if missing:
            paths = self.lists[which].paths
            bar = _Bar(len(missing), f"embedding {which} ({self.embedder.name})", self.progress)
            try:
                raw, flipped, got = embed_images(
                    self.embedder, missing, lambda i: load_image(paths[i]),
                    degrade_to=self.degrade_to[which], resize=self.resize, indicator=indicator,
                    strategy=strategy, flip=self.flip, batch_size=self.batch_size, bar=bar,
                    degradation=self.degradation)
            finally:
                bar.close()
            summed = raw + flipped if flipped is not None else raw
            for j, i in enumerate(missing):
                self.store[(which, i, got[j])] = summed[j]
        return np.stack([self.store[(which, i, s)] for i, s in enumerate(sides)]), sides


def _identity_lists(gallery: IdentityList, mated: IdentityList,
                    unmated: IdentityList | None) -> dict[str, IdentityList]:
    for what, lst in (("gallery", gallery), ("mated probes", mated)):
        if len(lst) == 0:
            raise ProtocolFileError(f"the {what} list is empty")
        if lst.identities is None:
            raise ProtocolFileError(f"the {what} list needs an identity per image "
                                    f"('path<TAB>identity')")
    out = {"gallery": gallery, "mated": mated}
    if unmated is not None:
        if len(unmated) == 0:
            raise ProtocolFileError("the unmated probe list is empty")
        out["unmated"] = unmated
    return out


class IdentificationProtocol:
    """Embeds a 1:N protocol once per needed side and scores it under any routing.

    Args:
        embedder: an :class:`Embedder`, a BTNet, a torch callable or an ONNX session.
        gallery, mated, unmated: identity lists (``unmated`` optional: CMC only).
        resize: resize spec (reference for SurvFace: PIL bicubic).
        probe_size: degrade every probe (mated and unmated) to ``R``×``R`` first, e.g. to
            exercise the routing on 112-px protocols; the gallery keeps its size.
        flip: flip TTA (the reference identifies without it).
        batch_size, progress: embedding batch size and tqdm bars.
        name: table name (default: the embedder's).
        degradation: degrade the probes to ``probe_size`` with this (seeded per image) instead
            of resizing them (as :func:`run_verification`).
    """

    def __init__(self, embedder: Any, gallery: IdentityList, mated: IdentityList,
                 unmated: IdentityList | None = None, *, resize: ResizeSpec = PIL_BICUBIC,
                 probe_size: int | None = None, flip: bool = False, batch_size: int = 64,
                 progress: bool = True, name: str | None = None,
                 degradation: DegradationSpec | None = None) -> None:
        if probe_size is not None and probe_size < 1:
            raise ConfigError(f"probe_size must be >= 1 px, got {probe_size}")
        self.embedder = as_embedder(embedder, name)
        self.name = name or self.embedder.name
        lists = _identity_lists(gallery, mated, unmated)
        self.probe_size, self.resize = probe_size, resize
        degrade_to = {k: (None if k == "gallery" else probe_size) for k in lists}
        self.cache = _IdentCache(self.embedder, lists, degrade_to, resize, flip, batch_size,
                                 progress, degradation)
        self.lists = lists
        self.progress = progress

    def run(self, indicator: str = "max", strategy: str = "ceil", *,
            modes: Sequence[str] = MODES, rank: int = 20,
            fpirs: Sequence[float] = DEFAULT_FPIRS) -> IdentificationRun:
        """Embed (what is not cached yet) with this routing and score the protocol."""
        if indicator not in INDICATORS or strategy not in STRATEGIES:
            raise ConfigError(f"indicator must be one of {INDICATORS} and strategy one of "
                              f"{STRATEGIES}, got {indicator!r}, {strategy!r}")
        bad = [m for m in modes if m not in MODES]
        if bad or not modes:
            raise ConfigError(f"unknown identification mode(s) {bad}; accepted: {MODES}")
        g, _ = self.cache.embeddings("gallery", indicator, strategy)
        m, m_sides = self.cache.embeddings("mated", indicator, strategy)
        u, u_sides = (self.cache.embeddings("unmated", indicator, strategy)
                      if "unmated" in self.lists else (None, []))
        result = evaluate_identification(
            g, self.lists["gallery"].identities, m, self.lists["mated"].identities, u,
            rank=rank, fpirs=fpirs, modes=list(modes), progress=self.progress)
        routes = dict(sorted(Counter(m_sides + u_sides).items()))
        extra = {"indicator": indicator, "strategy": strategy,
                 "probe size": self.probe_size or "native",
                 "probe paths": ", ".join(f"{n} at {s}px" for s, n in routes.items())}
        rows = ([identification_row(self.name, result, mode, **extra) for mode in modes]
                if result.open_set else [identification_row(self.name, result, "", **extra)])
        return IdentificationRun(self.name, result, rows, routes)


def run_identification(embedder: Any, gallery: IdentityList, mated: IdentityList,
                       unmated: IdentityList | None = None, *, indicator: str = "max",
                       strategy: str = "ceil", modes: Sequence[str] = MODES,
                       resize: ResizeSpec = PIL_BICUBIC, rank: int = 20,
                       probe_size: int | None = None, fpirs: Sequence[float] = DEFAULT_FPIRS,
                       flip: bool = False, batch_size: int = 64, progress: bool = True,
                       name: str | None = None, degradation: DegradationSpec | None = None) -> IdentificationRun:
    """Run the 1:N protocol with a model under one routing (see :class:`IdentificationProtocol`).

    Each image (probes degraded to ``probe_size`` first when given) is routed by
    ``indicator``/``strategy`` to a resolution of a BTNet and resized there with ``resize``;
    a baseline gets every image resized to its input size (112).
    """
    proto = IdentificationProtocol(embedder, gallery, mated, unmated, resize=resize,
                                   probe_size=probe_size, flip=flip, batch_size=batch_size,
                                   progress=progress, name=name, degradation=degradation)
    return proto.run(indicator, strategy, modes=modes, rank=rank, fpirs=fpirs)


def run_routing_table(embedder: Any, gallery: IdentityList, mated: IdentityList,
                      unmated: IdentityList | None = None, *,
                      indicators: Sequence[str] = INDICATORS,
                      strategies: Sequence[str] = STRATEGIES, **kwargs: Any
                      ) -> list[IdentificationRun]:
    """:func:`run_identification` for every indicator × strategy (9 by default).

    Images are embedded once per side they are routed to, whatever the combination.
    Keyword arguments are those of :func:`run_identification` (except the routing).
    """
    run_kw = {k: kwargs.pop(k) for k in ("modes", "rank", "fpirs") if k in kwargs}
    proto = IdentificationProtocol(embedder, gallery, mated, unmated, **kwargs)
    if not proto.embedder.routes:
        raise ConfigError(f"{proto.name} does not route images (it up-samples everything to "
                          f"its input size); the routing table needs a BTNet")
    return [proto.run(i, s, **run_kw) for i in indicators for s in strategies]


def accuracy_by_setting(runs: Sequence[VerificationRun]) -> dict[str, dict[str, float]]:
    """``{model: {setting: accuracy %}}`` for :func:`~.report.plot_accuracy_vs_resolution`."""
    return {r.name: {s: 100.0 * res.accuracy for s, res in r.results.items()} for r in runs}


def verification_gains(model: VerificationRun, hr: VerificationRun,
                       mr: VerificationRun | None = None,
                       same: dict[int, VerificationRun] | None = None) -> list[dict]:
    """The paper's gains of ``model`` over ``hr`` per setting, where the reference row exists.

    Cross-resolution settings need ``mr`` (the mixed-resolution model); same-resolution
    settings ``r&r`` need ``same[r]`` (the model trained at ``r``). Every row also holds the
    plain accuracy difference ``model − hr`` in points.
    """
    from .gains import cross_resolution_gain, same_resolution_gain

    rows = []
    for s, res in model.results.items():
        if s not in hr.results:
            continue
        setting = parse_setting(s)
        m, m_hr = res.accuracy, hr.results[s].accuracy
        ref = mr if setting.is_cross else (same or {}).get(setting.r1)
        gain = None
        if ref is not None and s in ref.results:
            fn = cross_resolution_gain if setting.is_cross else same_resolution_gain
            gain = fn(m, m_hr, ref.results[s].accuracy)
        rows.append({"model": model.name, "setting": s, "hr": hr.name,
                     "reference": ref.name if ref is not None else "",
                     "Δ accuracy (points)": 100.0 * (m - m_hr), "gain": gain})
    return rows
