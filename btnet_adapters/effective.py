"""Effective optical resolution: how many pixels of detail a face image really carries.

Pixel size is a poor proxy for resolution: a 112-px file may hold a 14-px face that was
enlarged, blurred or compressed. This module estimates the *effective side* of an image from
its content and routes by it (:func:`route_effective`, ``BTNet.embed(indicator="effective")``).

**The estimator.** The image is turned grey, resized to ``analysis_size`` (112) square and
Hann-windowed; its power spectrum is measured in rings of radius ``f`` (cycles per image). A face
sampled at ``s`` px holds content up to ``s/2`` cycles, and enlarging it leaves (almost) no energy
near ``f = s``: every interpolation kernel that reproduces constants is zero at the sampling
frequency, so only faint replicas of the content reach that ring. A face of ``2s`` px or more has
real detail there. For every candidate side ``s_j`` but the largest, the feature is
``f_j = log10(energy in the ring (0.95 s_j, 1.1 s_j] / energy above 0.75 cycles)`` and the
calibrated threshold ``t_j`` answers "does the image carry at least ``s_{j+1}`` px?". The estimate
walks up from the smallest side and stops at the first "no", so noise at high frequencies cannot
make a tiny face look sharp. The largest side means "full detail at the analysis size".

**Calibration.** :func:`calibrate` degrades sharp faces to every candidate side with several
resamplers, re-enlarges them to larger pixel sizes, JPEG-compresses most copies at several
qualities, measures the features and fits each threshold to separate the sides above it from
those below (best balanced accuracy). The result is a small JSON-serialisable
:class:`EffectiveCalibration`; :func:`default_calibration` is the one fitted on the ORL faces
bundled with the package (:func:`calibrate_orl` regenerates it).

**Limits.** Faces enlarged by nearest-neighbour / box resampling (visible pixel blocks) have real
sharp edges and read as full detail; strong JPEG compression (quality <= 75) fills the rings with
block artefacts, so compressed 28-px faces mostly read as sharp. Both errors over-estimate, which
falls back to what size-based routing does (the trunk).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import routing
from .errors import ConfigError, InputImageError
from .images import to_pixels
from .resize import CV2_BILINEAR, PIL_BICUBIC, PIL_BILINEAR, ResizeSpec, resize_array

__all__ = [
    "CALIBRATION_DEGRADATIONS",
    "CALIBRATION_JPEG_QUALITIES",
    "DEFAULT_ENLARGE",
    "DEFAULT_RING",
    "DEFAULT_SIDES",
    "EffectiveCalibration",
    "band_features",
    "calibrate",
    "calibrate_orl",
    "confusion",
    "default_calibration",
    "degrade",
    "effective_side",
    "effective_sides",
    "register",
    "route_effective",
    "route_pixels",
]

#: Candidate effective sides of the default calibration (pixels at the 112 analysis scale).
DEFAULT_SIDES: tuple[int, ...] = (7, 14, 28, 56, 112)
#: Ring around each candidate's sampling frequency, as multiples of the side: (0.95 s, 1.1 s].
DEFAULT_RING: tuple[float, float] = (0.95, 1.1)
#: Pixel sizes the degraded calibration copies are re-enlarged to (used in turn).
DEFAULT_ENLARGE: tuple[int, ...] = (112, 160, 224)
#: Resamplers of the calibration copies (down and up): antialiased PIL bilinear (like a camera
#: integrating over pixels), the reference's non-antialiased OpenCV bilinear, and PIL bicubic.
CALIBRATION_DEGRADATIONS: tuple[ResizeSpec, ...] = (PIL_BILINEAR, CV2_BILINEAR, PIL_BICUBIC)
#: JPEG qualities the calibration copies are saved with, in turn (None: uncompressed). JPEG's
#: 8×8 blocks add energy at the rings, so compressed copies in the calibration keep the
#: thresholds from reading compressed low-resolution faces as sharp (it costs little on clean ones).
CALIBRATION_JPEG_QUALITIES: tuple[int | None, ...] = (None, 95, 85, 70, 50)
_LOW_CUT = 0.75  # cycles per image; below it the window's DC leak dominates
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 grey
_CHUNK = 256  # images per FFT batch


@dataclass(frozen=True)
class EffectiveCalibration:
    """Thresholds of the effective-resolution estimator and how they were obtained.

    Args:
        sides: candidate effective sides, ascending; the largest equals ``analysis_size``.
        thresholds: one per side but the largest; ``thresholds[j]`` decides "at least
            ``sides[j + 1]`` px" from the ring energy around frequency ``sides[j]``.
        analysis_size: side the image is resized to before its spectrum is measured.
        ring: the ring ``(ring[0] * s, ring[1] * s]`` (cycles per image) measured for side ``s``.
        low_cut: frequencies at or below this (cycles per image) are left out of the
            normalising energy.
        source: what the thresholds were fitted on.
        n_images: sharp images used (each degraded to every side with every resampler).
        degradations: the resamplers (``ResizeSpec.to_dict()``) of the calibration copies.
        enlarge: pixel sizes the copies were re-enlarged to.
        jpeg_qualities: JPEG qualities the copies were saved with (``None``: uncompressed).
        accuracy: fraction of calibration copies whose side was estimated exactly.
        confusion: calibration confusion table (rows: true side, columns: estimated side).
    """

    sides: tuple[int, ...]
    thresholds: tuple[float, ...]
    analysis_size: int = 112
    ring: tuple[float, float] = DEFAULT_RING
    low_cut: float = _LOW_CUT
    source: str = ""
    n_images: int = 0
    degradations: tuple[dict[str, Any], ...] = ()
    enlarge: tuple[int, ...] = ()
    jpeg_qualities: tuple[int | None, ...] = ()
    accuracy: float | None = None
    confusion: tuple[tuple[int, ...], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        sides = tuple(self.sides)
        size = self.analysis_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ConfigError(f"analysis_size must be an integer >= 8, got {size!r}")
        if len(sides) < 2 or any(isinstance(s, bool) or not isinstance(s, int) for s in sides):
            raise ConfigError(f"sides must be at least two integers, got {sides!r}")
        if list(sides) != sorted(set(sides)) or sides[0] < 1:
            raise ConfigError(f"sides must be positive and strictly ascending, got {sides!r}")
        if sides[-1] != size:
            raise ConfigError(f"the largest side must equal analysis_size ({size}) — it stands for "
                              f"'full detail'; got sides {sides!r}")
        if len(self.thresholds) != len(sides) - 1:
            raise ConfigError(f"need {len(sides) - 1} thresholds for sides {sides!r}, got {len(self.thresholds)}")
        if not all(np.isfinite(float(t)) for t in self.thresholds):
            raise ConfigError(f"thresholds must be finite numbers, got {self.thresholds!r}")
        if len(self.ring) != 2:
            raise ConfigError(f"ring must be two numbers (inner, outer), got {self.ring!r}")
        lo, hi = (float(v) for v in self.ring)
        if not 0 < lo < hi:
            raise ConfigError(f"ring must be (inner, outer) with 0 < inner < outer, got {self.ring!r}")
        reach = hi * sides[-2]
        if reach > size / 2 * np.sqrt(2):
            raise ConfigError(f"the ring of side {sides[-2]} reaches {reach:.1f} cycles, beyond the "
                              f"{size}-px spectrum (max {size / 2 * np.sqrt(2):.1f}); lower the sides or the ring")
        if not 0 <= float(self.low_cut) < lo * sides[0]:
            raise ConfigError(f"low_cut must be in [0, {lo * sides[0]:.2f}), got {self.low_cut!r}")
        object.__setattr__(self, "sides", sides)
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "ring", (lo, hi))
        object.__setattr__(self, "low_cut", float(self.low_cut))
        object.__setattr__(self, "degradations", tuple(dict(d) for d in self.degradations))
        object.__setattr__(self, "enlarge", tuple(int(e) for e in self.enlarge))
        object.__setattr__(self, "jpeg_qualities", tuple(None if q is None else int(q) for q in self.jpeg_qualities))
        object.__setattr__(self, "confusion", tuple(tuple(int(v) for v in row) for row in self.confusion))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (lists instead of tuples)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EffectiveCalibration":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError(f"a calibration is a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown calibration keys {sorted(unknown)}; accepted: {sorted(known)}")
        missing = {"sides", "thresholds"} - set(data)
        if missing:
            raise ConfigError(f"calibration lacks {sorted(missing)}")
        values = dict(data)
        try:
            for key in ("sides", "thresholds", "ring", "enlarge", "jpeg_qualities", "degradations"):
                if key in values:
                    values[key] = tuple(values[key])
            if "confusion" in values:
                values["confusion"] = tuple(tuple(row) for row in values["confusion"])
            return cls(**values)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"malformed calibration: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibration as JSON (atomically) and return the path."""
        from ._atomic import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EffectiveCalibration":
        """Read a calibration written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read calibration {path}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"calibration {path} is not JSON: {exc}") from exc
        return cls.from_dict(data)


# Fitted by calibrate_orl() on the 400 ORL faces bundled in btnet_adapters/assets/orl
# (thresholds rounded to 4 decimals); tests/test_effective.py checks that it is reproduced.
_ORL_CALIBRATION: dict[str, Any] = {
    "sides": [7, 14, 28, 56, 112],
    "thresholds": [-3.1653, -3.7162, -4.2836, -4.4760],
    "analysis_size": 112,
    "ring": list(DEFAULT_RING),
    "low_cut": _LOW_CUT,
    "source": "ORL faces (Olivetti Research Laboratory, Cambridge; Samaria & Harter 1994), "
              "40 people x 10 images, bundled",
    "n_images": 400,
    "degradations": [spec.to_dict() for spec in CALIBRATION_DEGRADATIONS],
    "enlarge": list(DEFAULT_ENLARGE),
    "jpeg_qualities": list(CALIBRATION_JPEG_QUALITIES),
    "accuracy": 0.8462,  # on the copies, 4 in 5 of them JPEG-compressed (0.976 without JPEG)
    "confusion": [[1188, 12, 0, 0, 0], [32, 1161, 0, 0, 7], [0, 14, 769, 19, 398],
                  [0, 0, 29, 915, 256], [0, 0, 0, 156, 1044]],
}


def default_calibration() -> EffectiveCalibration:
    """The bundled calibration, fitted on the ORL faces shipped with the package."""
    return EffectiveCalibration.from_dict(_ORL_CALIBRATION)


# ----------------------------------------------------------------------------- features
@lru_cache(maxsize=8)
def _analysis_masks(size: int, sides: tuple[int, ...], ring: tuple[float, float],
                    low_cut: float) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray]:
    """Hann window ``(S, S)``, one flat ring mask per side but the largest, and the flat mask of
    the normalising frequencies (above ``low_cut``)."""
    freq = np.fft.fftfreq(size) * size
    radius = np.hypot(freq[:, None], freq[None, :]).reshape(-1)
    rings = tuple((radius > ring[0] * s) & (radius <= ring[1] * s) for s in sides[:-1])
    window = np.outer(np.hanning(size), np.hanning(size))
    return window, rings, radius > low_cut


def _grey(pixels: torch.Tensor, size: int) -> np.ndarray:
    """``3×H×W`` pixels (0..255) → ``S×S`` float32 grey, resized with antialiasing."""
    rgb = pixels.detach().cpu().float().numpy()
    return _square(_LUMA[0] * rgb[0] + _LUMA[1] * rgb[1] + _LUMA[2] * rgb[2], size)


def _square(grey: np.ndarray, size: int) -> np.ndarray:
    """Resize a float grey image to ``size``×``size`` (PIL bilinear on floats: antialiased when
    shrinking; single-threaded, so it stays fast on a busy machine)."""
    from PIL import Image

    grey = np.asarray(grey, dtype=np.float32)
    if grey.shape == (size, size):
        return grey
    image = Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _grey_features(greys: Sequence[np.ndarray], calibration: EffectiveCalibration) -> np.ndarray:
    """``(N, J)`` log10 ring-energy ratios of ``S×S`` grey images."""
    cal = calibration
    window, masks, total = _analysis_masks(cal.analysis_size, cal.sides, cal.ring, cal.low_cut)
    grey = np.stack(greys).astype(np.float64)
    grey = (grey - grey.mean(axis=(1, 2), keepdims=True)) * window
    power = (np.abs(np.fft.fft2(grey)) ** 2).reshape(len(grey), -1)
    rings = np.stack([power[:, mask].sum(axis=1) for mask in masks], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log10(rings / power[:, total].sum(axis=1, keepdims=True))
    return np.nan_to_num(ratio, nan=-np.inf, posinf=np.inf)  # 0/0 (blank image): no detail


def _features(pixels: Sequence[torch.Tensor], calibration: EffectiveCalibration,
              progress: bool | None = None) -> np.ndarray:
    """``(N, J)`` features of pixels in :func:`to_pixels` form, in chunks."""
    from .progress import progress_bar

    size = calibration.analysis_size
    out = np.empty((len(pixels), len(calibration.sides) - 1))
    show = progress or (progress is None and len(pixels) > 4 * _CHUNK)
    for start in progress_bar(range(0, len(pixels), _CHUNK), desc="effective resolution", unit="chunk",
                              disable=not show):
        chunk = [_grey(p, size) for p in pixels[start:start + _CHUNK]]
        out[start:start + len(chunk)] = _grey_features(chunk, calibration)
    return out


def _classify(features: np.ndarray, calibration: EffectiveCalibration) -> np.ndarray:
    """Effective side per feature row: walk up the sides, stop at the first failed threshold."""
    failed = features < np.asarray(calibration.thresholds)[None, :]
    first = np.where(failed.any(axis=1), failed.argmax(axis=1), failed.shape[1])
    return np.asarray(calibration.sides, dtype=np.int64)[first]


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    raise InputImageError(f"expected a list of images (or an N×C×H×W tensor), got {type(images).__name__}; "
                          "wrap a single image in a list or use effective_side()")


def _pixels(images: Any) -> list[torch.Tensor]:
    items = _as_list(images)
    if not items:
        raise InputImageError("no images given")
    return [to_pixels(image, i) for i, image in enumerate(items)]


def _calibration(calibration: EffectiveCalibration | None) -> EffectiveCalibration:
    if calibration is None:
        return default_calibration()
    if not isinstance(calibration, EffectiveCalibration):
        raise ConfigError(f"calibration must be an EffectiveCalibration (or None for the default), "
                          f"got {type(calibration).__name__}; use EffectiveCalibration.load(path) for a file")
    return calibration


def band_features(images: Sequence[Any], calibration: EffectiveCalibration | None = None,
                  progress: bool | None = None) -> np.ndarray:
    """The estimator's features: ``(N, len(sides) - 1)`` log10 ring-energy ratios.

    Args:
        images: PIL images, H×W(×C) uint8 arrays or C×H×W tensors (as :meth:`BTNet.embed`).
        calibration: sides, ring and analysis size to measure (default: the bundled one).
        progress: tqdm bar (default: for more than 1,024 images).

    Returns:
        float64 array; ``-inf`` where a ring (or the whole image) holds no energy.
    """
    return _features(_pixels(images), _calibration(calibration), progress)


def effective_sides(images: Sequence[Any], calibration: EffectiveCalibration | None = None,
                    progress: bool | None = None) -> np.ndarray:
    """Effective side of every image, in pixels at the calibration's analysis scale (112).

    Returns:
        int64 array of shape ``(N,)``; every value is one of ``calibration.sides``. The largest
        side means "full detail at the analysis size" (the estimator cannot see beyond it).

    Raises:
        InputImageError: an image of the wrong type, shape or values.
        ConfigError: ``calibration`` is not an :class:`EffectiveCalibration`.
    """
    cal = _calibration(calibration)
    return _classify(_features(_pixels(images), cal, progress), cal)


def effective_side(image: Any, calibration: EffectiveCalibration | None = None) -> int:
    """Effective side of one image (see :func:`effective_sides`)."""
    return int(effective_sides([image], calibration)[0])


def route_pixels(pixels: Sequence[torch.Tensor], resolutions: Sequence[int], strategy: str = "ceil",
                 calibration: EffectiveCalibration | None = None,
                 progress: bool | None = None) -> np.ndarray:
    """:func:`route_effective` for images already converted by :func:`btnet_adapters.images.to_pixels`."""
    cal = _calibration(calibration)
    sides = _classify(_features(pixels, cal, progress), cal)
    limits = np.where(sides >= cal.sides[-1], np.inf, sides.astype(np.float64))
    sizes = np.array([(p.shape[2], p.shape[1]) for p in pixels], dtype=np.int64).reshape(-1, 2)
    return routing.select_resolutions_effective(sizes, limits, resolutions, strategy)


def route_effective(images: Sequence[Any], resolutions: Sequence[int], strategy: str = "ceil",
                    calibration: EffectiveCalibration | None = None,
                    progress: bool | None = None) -> np.ndarray:
    """Select a resolution for each image by its effective resolution.

    The indicator is ``min(max(W, H), effective side)`` (an image never carries more detail
    than its pixel size); an image estimated at full detail routes by ``max(W, H)`` alone. The
    allocation follows :func:`btnet_adapters.routing.select_resolutions_effective`.

    Args:
        images: PIL images, H×W(×C) uint8 arrays or C×H×W tensors.
        resolutions: available resolutions; the largest is the trunk size.
        strategy: ``"ceil"``, ``"near"`` or ``"floor"``.
        calibration: estimator thresholds (default: the bundled ORL calibration).
        progress: tqdm bar (default: for more than 1,024 images).

    Returns:
        int64 array of shape ``(N,)``: the selected resolution of each image.
    """
    return route_pixels(_pixels(images), resolutions, strategy, calibration, progress)


# ----------------------------------------------------------------------------- calibration
def degrade(image: np.ndarray, resolution: int, size: int, spec: ResizeSpec = PIL_BILINEAR,
            jpeg_quality: int | None = None) -> np.ndarray:
    """Down-sample a square uint8 image to ``resolution`` px and re-enlarge it to ``size`` px.

    Both steps use ``spec``; ``resolution`` at or above the image side skips the down-sampling.
    ``jpeg_quality`` (1-95) also saves the result as a JPEG of that quality and decodes it.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise InputImageError("degrade expects an H×W or H×W×C uint8 numpy array")
    for name, value in (("resolution", resolution), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1 px, got {value!r}")
    if jpeg_quality is not None and (isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, (int, np.integer))
                                     or not 1 <= jpeg_quality <= 95):
        raise ConfigError(f"jpeg_quality must be None or an integer in 1..95, got {jpeg_quality!r}")
    low = image if resolution >= max(image.shape[:2]) else resize_array(image, int(resolution), spec)
    out = resize_array(low, int(size), spec)
    return out if jpeg_quality is None else _jpeg(out, int(jpeg_quality))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip a uint8 image through a JPEG of ``quality``."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    squeeze = image.ndim == 3 and image.shape[2] == 1
    Image.fromarray(image[..., 0] if squeeze else image).save(buffer, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        out = np.array(decoded)
    return out[..., None] if squeeze else out


def _fit_threshold(values: np.ndarray, positive: np.ndarray) -> float:
    """Threshold with the best balanced accuracy for ``values >= t`` ⇔ positive (middle of ties)."""
    order = np.argsort(values, kind="stable")
    v, p = values[order], positive[order]
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    # cut i: values[:i] are called negative, values[i:] positive
    tpr = (n_pos - np.concatenate([[0], np.cumsum(p)])) / n_pos
    tnr = np.concatenate([[0], np.cumsum(~p)]) / n_neg
    score = 0.5 * (tpr + tnr)
    valid = np.ones(len(v) + 1, dtype=bool)
    valid[1:-1] = v[1:] > v[:-1]  # only cut between distinct values
    score[~valid] = -1.0
    best = np.flatnonzero(score == score.max())
    i = int(best[len(best) // 2])
    if i == 0:
        return float(v[0] - 1.0) if np.isfinite(v[0]) else float(np.min(v[np.isfinite(v)], initial=0.0) - 1.0)
    if i == len(v):
        return float(v[-1] + 1.0)
    lower = v[i - 1] if np.isfinite(v[i - 1]) else v[i] - 2.0
    return float((lower + v[i]) / 2)


def confusion(true_sides: Sequence[int], estimated: Sequence[int], sides: Sequence[int]) -> np.ndarray:
    """Confusion table: rows the true sides, columns the estimated ones, both in ``sides`` order."""
    index = {int(s): i for i, s in enumerate(sides)}
    table = np.zeros((len(sides), len(sides)), dtype=np.int64)
    for t, e in zip(true_sides, estimated):
        if int(t) not in index or int(e) not in index:
            raise ConfigError(f"side {int(t) if int(t) not in index else int(e)} is not one of {list(sides)}")
        table[index[int(t)], index[int(e)]] += 1
    return table


def _specs(resize_spec: ResizeSpec | Sequence[ResizeSpec] | None) -> tuple[ResizeSpec, ...]:
    specs = CALIBRATION_DEGRADATIONS if resize_spec is None else resize_spec
    specs = (specs,) if isinstance(specs, ResizeSpec) else tuple(specs)
    if not specs or not all(isinstance(s, ResizeSpec) for s in specs):
        raise ConfigError("resize_spec must be a ResizeSpec, a non-empty sequence of them, or None")
    return specs


def calibrate(
    images: Sequence[Any],
    resolutions: Sequence[int] = DEFAULT_SIDES,
    resize_spec: ResizeSpec | Sequence[ResizeSpec] | None = None,
    *,
    enlarge: Sequence[int] = DEFAULT_ENLARGE,
    jpeg_qualities: Sequence[int | None] = CALIBRATION_JPEG_QUALITIES,
    analysis_size: int | None = None,
    ring: tuple[float, float] = DEFAULT_RING,
    source: str = "",
    progress: bool | None = None,
) -> EffectiveCalibration:
    """Fit the estimator's thresholds on degraded copies of sharp faces.

    Every image is turned grey, resized to ``analysis_size`` square (antialiased) and taken as
    full detail; for each resampler and each side ``r`` in ``resolutions`` it is down-sampled to
    ``r`` px, re-enlarged to one of ``enlarge`` and optionally JPEG-compressed with one of
    ``jpeg_qualities`` (each list used in turn). Threshold ``j`` is fitted to
    separate the copies of side ``>= resolutions[j + 1]`` from the others.

    Args:
        images: sharp faces (PIL images, uint8 arrays or C×H×W tensors), ideally at least
            ``analysis_size`` px: smaller ones are enlarged and soften the top class.
        resolutions: candidate sides; the largest is the analysis size.
        resize_spec: resampler(s) of the copies (default: :data:`CALIBRATION_DEGRADATIONS`).
        enlarge: pixel sizes the copies are re-enlarged to.
        jpeg_qualities: JPEG qualities the copies are saved with, in turn (``None``: not
            compressed; default :data:`CALIBRATION_JPEG_QUALITIES`). Give the compression your
            inputs have, e.g. ``(None,)`` for lossless images only.
        analysis_size: default ``max(resolutions)``.
        ring: ring around each side's sampling frequency, as multiples of the side.
        source: a note recorded in the calibration (what the faces are).
        progress: tqdm bar over the images (default: for more than 50 images).

    Returns:
        The fitted :class:`EffectiveCalibration` with its calibration accuracy and confusion.
    """
    from .progress import progress_bar

    sides = sorted(set(int(r) for r in resolutions))
    size = int(analysis_size) if analysis_size is not None else sides[-1]
    specs = _specs(resize_spec)
    sizes = [int(e) for e in enlarge]
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"enlarge must name pixel sizes >= 1, got {list(enlarge)!r}")
    qualities = list(jpeg_qualities)
    if not qualities:
        raise ConfigError("jpeg_qualities must not be empty; use (None,) for no compression")
    # validates sides/ring/size before the (slow) measurement
    template = EffectiveCalibration(tuple(sides), (0.0,) * (len(sides) - 1), size, ring)
    faces = _pixels(images)
    show = progress or (progress is None and len(faces) > 50)
    features, truth = [], []
    count = 0
    for face in progress_bar(faces, desc="calibrate", unit="image", disable=not show):
        sharp = np.clip(np.round(_grey(face, size)), 0, 255).astype(np.uint8)
        copies = []
        for spec in specs:
            for r in sides:
                quality = qualities[(count // len(sizes)) % len(qualities)]  # every (size, quality) pair
                copy = degrade(sharp, r, sizes[count % len(sizes)], spec, quality)
                copies.append(_square(copy, size))
                truth.append(r)
                count += 1
        features.append(_grey_features(copies, template))
    features = np.concatenate(features)
    truth_array = np.asarray(truth)
    thresholds = tuple(_fit_threshold(features[:, j], truth_array >= sides[j + 1]) for j in range(len(sides) - 1))
    fitted = EffectiveCalibration(tuple(sides), thresholds, size, ring)
    estimated = _classify(features, fitted)
    return EffectiveCalibration(
        tuple(sides), thresholds, size, ring, source=source, n_images=len(faces),
        degradations=tuple(s.to_dict() for s in specs), enlarge=tuple(sizes), jpeg_qualities=tuple(qualities),
        accuracy=float(np.mean(estimated == truth_array)),
        confusion=tuple(map(tuple, confusion(truth_array, estimated, sides).tolist())),
    )


def calibrate_orl(progress: bool | None = None) -> EffectiveCalibration:
    """Recompute the bundled default calibration from the ORL faces shipped with the package."""
    from .data.orl import orl_faces

    return calibrate(orl_faces(per_subject=10), DEFAULT_SIDES, CALIBRATION_DEGRADATIONS, enlarge=DEFAULT_ENLARGE,
                     jpeg_qualities=CALIBRATION_JPEG_QUALITIES, source=_ORL_CALIBRATION["source"], progress=progress)


# ----------------------------------------------------------------------------- command line
def _open_images(paths: Sequence[str]) -> tuple[list[Path], list[Any]]:
    from PIL import Image

    from .data.decode import IMAGE_EXTENSIONS

    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise InputImageError(f"no such image or folder: {path}")
    if not files:
        raise InputImageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {', '.join(paths)}")
    images = []
    for path in files:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return files, images


def _cmd_estimate(args: Any) -> int:
    cal = EffectiveCalibration.load(args.calibration) if args.calibration else default_calibration()
    files, images = _open_images(args.images)
    sides = effective_sides(images, cal)
    for path, image, side in zip(files, images, sides):
        print(f"{path}\t{image.width}x{image.height}\teffective {int(side)}")
    return 0


def _cmd_calibrate(args: Any) -> int:
    _, images = _open_images(args.images)
    cal = calibrate(images, args.resolutions, jpeg_qualities=args.jpeg,
                    source=args.source or ", ".join(args.images))
    cal.save(args.out)
    print(f"calibrated on {cal.n_images} images: accuracy {cal.accuracy:.3f}, thresholds "
          f"{', '.join(f'{t:.3f}' for t in cal.thresholds)} -> {args.out}")
    return 0


def _jpeg_qualities(text: str) -> list[int | None]:
    import argparse

    try:
        return [None if v.strip().lower() == "none" else int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected JPEG qualities 1-99 or 'none', comma-separated "
                                         f"(e.g. none,90,70), got {text!r}") from None


def register(subparsers: Any) -> None:
    """Add ``btnet effective estimate|calibrate`` to the ``btnet`` command."""
    from ._parse import int_list

    parser = subparsers.add_parser("effective", help="effective (optical) resolution of face images")
    sub = parser.add_subparsers(dest="effective_command", required=True)
    est = sub.add_parser("estimate", help="print the effective side of images")
    est.add_argument("images", nargs="+", help="image files or folders")
    est.add_argument("--calibration", help="calibration JSON (default: the bundled ORL one)")
    est.set_defaults(func=_cmd_estimate)
    cal = sub.add_parser("calibrate", help="fit the estimator on your own sharp faces")
    cal.add_argument("images", nargs="+", help="sharp face images or folders")
    cal.add_argument("--out", required=True, help="calibration JSON to write")
    cal.add_argument("--resolutions", type=int_list,
                     default=list(DEFAULT_SIDES), help="candidate sides, e.g. 7,14,28,56,112")
    cal.add_argument("--jpeg", type=_jpeg_qualities,
                     default=list(CALIBRATION_JPEG_QUALITIES),
                     help="JPEG qualities of the copies, e.g. none,90,75 (default: none,95,85,70,50)")
    cal.add_argument("--source", default="", help="a note recorded in the calibration")
    cal.set_defaults(func=_cmd_calibrate)
