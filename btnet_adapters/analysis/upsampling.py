"""Up-sampling error of low-resolution faces: a bilinear interpolation bound and the real error.

The paper motivates branches with the error that bilinear up-sampling puts into small faces
(its Fig. 1 and appendix A.1). This module estimates that error for your own images and, next
to it, measures the error that a real down-then-up resize pipeline produces.

**The estimate.** Treat a ``S×S`` face (``S = 112``) as a smooth function ``f(x, y)`` of pixel
coordinates with values in [0, 1] (luminance). Shrinking it to ``r×r`` keeps samples on a grid
of spacing ``h = S / r`` at the half-pixel centres ``c_k = (k + 1/2)·h − 1/2`` (OpenCV, PIL
and ``align_corners=False`` torch all use them); bilinear up-sampling rebuilds ``f`` inside each
grid cell ``[x0, x1] × [y0, y1]`` from the four corner samples. Bilinear interpolation is the
tensor product of two linear interpolations,
``I − LxLy = (I − Lx) + (I − Ly) − (I − Lx)(I − Ly)``,
and each factor has the classical Lagrange (Peano kernel) remainder. With
``ωx = (x − x0)(x − x1)`` and ``ωy = (y − y0)(y − y1)``::

    f − LxLy f = ½·ωx·f_xx(ξ1, y) + ½·ωy·f_yy(x, η1) − ¼·ωx·ωy·f_xxyy(ξ2, η2)

so, with ``|ωx| ≤ hx²/4`` and ``|ωy| ≤ hy²/4``,

    |f − LxLy f| ≤ hx²/8·max|f_xx| + hy²/8·max|f_yy| + hx²·hy²/64·max|f_xxyy|.

The last term, driven by the fourth-order mixed derivative, grows with ``h⁴`` and dominates for
tiny faces. The derivatives of an image are its finite differences on the ``S`` grid:
``Δ²x f = f(x−1) − 2f(x) + f(x+1)``, ``Δ²y f`` likewise, and the fourth-order mixed difference
``Δ²xΔ²y f`` (the 3×3 stencil ``[1, −2, 1] ⊗ [1, −2, 1]``). They are exact for polynomials of
degree two per axis (``Δ²xΔ²y`` of ``x²y²`` is 4 everywhere).

The text of the paper's appendix A.1 could not be retrieved while this was written, so the
estimate above is the standard tensor-product bound derived here, not a transcription of the
paper's formula; its constant (1/64 on the mixed term) is the one this derivation gives.

Per image and resolution three numbers come out of it:

* ``bound``: the right-hand side above with the maxima over the whole image (the classical
  sup-norm estimate);
* ``mixed_term``: its fourth-order mixed part ``hx²·hy²/64·max|Δ²xΔ²y f|``;
* ``pointwise_bound``: the mean over pixels of the cell-local bound
  ``|ωx|/2·Mxx + |ωy|/2·Myy + |ωx·ωy|/4·Mxxyy`` with ``ω`` at each pixel and the maxima ``M``
  over that pixel's cell only: comparable with the measured mean absolute error.

**The measurement.** Each image is down-sampled to ``r`` and up-sampled back to ``S`` with an
explicit :class:`~btnet_adapters.resize.ResizeSpec` (default: OpenCV bilinear without
antialiasing both ways, the reference's verification protocol) and compared with the original:
mean absolute error, RMSE and maximum over the pixels the bound covers (those between the
first and last sample centre; outside them libraries extrapolate by clamping, not by
interpolating), and the mean absolute error over the whole image. OpenCV and PIL specs run on
uint8 pixels as a real pipeline does, so their errors include rounding; the ``torch`` backend
computes in floating point. All numbers are in luminance units (0 = black, 1 = white) and are
averaged over images.

Images of another size are first scaled (aspect kept, antialiased bicubic in floating point)
so that their longer side is ``S``; resolution ``r`` then names the longer side and the shorter
one is scaled in proportion (at least 2 px).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.decode import IMAGE_EXTENSIONS
from ..data.errors import CorruptImageError, DatasetError, MissingDataError
from ..errors import ConfigError, InputImageError, ResolutionError
from ..resize import CV2_BILINEAR, ResizeSpec, resize_array, resize_tensor

#: Side of the faces networks take (the paper's 112).
REFERENCE_SIZE = 112
#: Resolutions analysed by default (px, relative to ``REFERENCE_SIZE``).
DEFAULT_RESOLUTIONS: tuple[int, ...] = (4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56,
                                        64, 80, 96, 112)
#: How images of another size are brought to the reference size (floating point, no rounding).
REFERENCE_RESIZE = ResizeSpec("torch", "bicubic", antialias=True)
#: Smallest resolution: bilinear interpolation needs two samples per axis.
MIN_RESOLUTION = 2

_EPS = 1e-9


# ----------------------------------------------------------------------------- images
def list_images(root: str | os.PathLike[str], limit: int | None = None) -> list[Path]:
    """Image files under ``root`` (flat or ``root/<identity>/<image>``), sorted by path.

    Args:
        root: a folder; searched recursively for :data:`~btnet_adapters.data.IMAGE_EXTENSIONS`.
        limit: keep at most this many, spread evenly over the sorted list (so every identity
            folder tends to contribute), or ``None`` for all.

    Raises:
        MissingDataError: ``root`` is not a folder.
        DatasetError: it holds no images.
        ConfigError: ``limit`` is not a positive integer.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError(f"image folder not found: {root}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    paths = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    if limit is not None and limit < len(paths):
        keep = np.unique(np.linspace(0, len(paths) - 1, limit).round().astype(int))
        paths = [paths[i] for i in keep]
    return paths


def to_luminance(image: np.ndarray) -> np.ndarray:
    """An image as ``H×W`` float64 luminance in [0, 1].

    Accepts uint8 ``H×W``, ``H×W×1`` or RGB ``H×W×3`` (ITU-R BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B``, as PIL's ``convert("L")`` without its rounding), or float
    ``H×W`` already in [0, 1].
    """
    if not isinstance(image, np.ndarray):
        raise InputImageError(f"expected a numpy image, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] in (1, 3):
        if image.dtype != np.uint8:
            raise InputImageError(f"H×W×C images must be uint8, got {image.dtype}")
        rgb = image.astype(np.float64)
        lum = rgb[..., 0] if image.shape[2] == 1 else rgb @ np.array([0.299, 0.587, 0.114])
        return lum / 255.0
    if image.ndim != 2:
        raise InputImageError(f"expected an H×W, H×W×1 or H×W×3 image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise InputImageError(f"H×W images must be uint8 or float in [0, 1], got {image.dtype}")
    lum = image.astype(np.float64)
    if not np.isfinite(lum).all() or lum.min() < 0.0 or lum.max() > 1.0:
        raise InputImageError("float images must hold finite values in [0, 1]")
    return lum


def to_reference(lum: np.ndarray, size: int = REFERENCE_SIZE) -> np.ndarray:
    """Scale a luminance image so its longer side is ``size`` (aspect kept; unchanged if it is)."""
    h, w = lum.shape
    if max(h, w) == size:
        return lum
    scale = size / max(h, w)
    hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = resize_tensor(torch.from_numpy(lum)[None, None], hw, REFERENCE_RESIZE)[0, 0]
    return out.clamp_(0.0, 1.0).numpy().astype(np.float64)


def load_luminance(path: str | os.PathLike[str]) -> np.ndarray:
    """One image file as ``H×W`` float64 luminance in [0, 1] (PIL ``convert("L")``)."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise MissingDataError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(f"{path}: cannot decode image ({exc})") from None
    return grey.astype(np.float64) / 255.0


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Axis:
    """Sampling geometry along one axis: ``n_hi`` pixels re-sampled at ``n_lo`` centres."""

    n_hi: int
    n_lo: int
    spacing: float
    nodes: np.ndarray       # sample centres c_k in high-resolution pixel coordinates
    first: int              # interior pixels: first..last lie between c_0 and c_{n_lo-1}
    last: int
    cell: np.ndarray        # cell index k of each interior pixel (c_k <= i <= c_{k+1})
    omega: np.ndarray       # |(i - c_k)(i - c_{k+1})| of each interior pixel
    spans: tuple[tuple[int, int], ...]  # pixel range [lo, hi] covering each cell


def _axis(n_hi: int, n_lo: int) -> _Axis:
    h = n_hi / n_lo
    nodes = (np.arange(n_lo) + 0.5) * h - 0.5
    first = math.ceil(nodes[0] - _EPS)
    last = math.floor(nodes[-1] + _EPS)
    pix = np.arange(first, last + 1, dtype=np.float64)
    cell = np.clip(np.searchsorted(nodes, pix + _EPS, side="right") - 1, 0, n_lo - 2)
    omega = np.clip((pix - nodes[cell]) * (nodes[cell + 1] - pix), 0.0, None)
    spans = tuple((max(0, math.floor(nodes[k] + _EPS)), min(n_hi - 1, math.ceil(nodes[k + 1] - _EPS)))
                  for k in range(n_lo - 1))
    return _Axis(n_hi, n_lo, h, nodes, first, last, cell, omega, spans)


def low_size(shape: tuple[int, int], resolution: int, size: int = REFERENCE_SIZE) -> tuple[int, int]:
    """``(h, w)`` of an image of ``shape`` (longer side ``size``) down-sampled to ``resolution``."""
    check_resolutions([resolution], size)
    h, w = shape
    return (max(MIN_RESOLUTION, round(h * resolution / size)),
            max(MIN_RESOLUTION, round(w * resolution / size)))


def check_resolutions(resolutions: Sequence[int], size: int = REFERENCE_SIZE) -> tuple[int, ...]:
    """Validated, de-duplicated, ascending resolutions (integers in ``[2, size]``)."""
    out = []
    for r in resolutions:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise ResolutionError(f"resolutions must be integers, got {r!r}")
        if not MIN_RESOLUTION <= r <= size:
            raise ResolutionError(f"resolution {r} is outside [{MIN_RESOLUTION}, {size}]: it is the "
                                  f"side an image of {size} px is down-sampled to")
        out.append(int(r))
    if not out:
        raise ResolutionError("no resolutions given; e.g. 4,7,14,28,56,112")
    return tuple(sorted(set(out)))


# ----------------------------------------------------------------------------- estimate
def second_differences(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``|Δ²x f|``, ``|Δ²y f|`` and ``|Δ²xΔ²y f|`` of ``(..., H, W)`` images, same shape.

    Each is computed at the pixels where its stencil fits and extended to the border by
    repeating the nearest value. ``H`` and ``W`` must be at least 3.
    """
    f = np.asarray(images, dtype=np.float64)
    if f.ndim < 2 or f.shape[-1] < 3 or f.shape[-2] < 3:
        raise InputImageError(f"second differences need images of at least 3×3 px, got {f.shape}")
    dxx = f[..., :, :-2] - 2.0 * f[..., :, 1:-1] + f[..., :, 2:]
    dyy = f[..., :-2, :] - 2.0 * f[..., 1:-1, :] + f[..., 2:, :]
    dxxyy = dxx[..., :-2, :] - 2.0 * dxx[..., 1:-1, :] + dxx[..., 2:, :]
    lead = [(0, 0)] * (f.ndim - 2)
    return (np.pad(np.abs(dxx), lead + [(0, 0), (1, 1)], mode="edge"),
            np.pad(np.abs(dyy), lead + [(1, 1), (0, 0)], mode="edge"),
            np.pad(np.abs(dxxyy), lead + [(1, 1), (1, 1)], mode="edge"))


def _cell_max(d: np.ndarray, ax: _Axis, axis: int) -> np.ndarray:
    """Maximum of ``d`` over each cell's pixel span ``[lo_k, hi_k]`` along ``axis``.

    The spans overlap by one or two pixels: span ``k`` is the disjoint segment
    ``[lo_k, lo_{k+1})`` (one ``maximum.reduceat``) plus pixels ``lo_{k+1}`` and ``hi_k``.
    """
    lo = np.array([s[0] for s in ax.spans])
    hi = np.array([s[1] for s in ax.spans])
    cuts = np.append(lo, hi[-1] + 1) if hi[-1] + 1 < d.shape[axis] else lo
    segments = np.take(np.maximum.reduceat(d, cuts, axis=axis), np.arange(len(lo)), axis=axis)
    ends = np.append(lo[1:], hi[-1])
    return np.maximum(segments, np.maximum(np.take(d, ends, axis=axis), np.take(d, hi, axis=axis)))


def _image_max(d: np.ndarray) -> np.ndarray:
    """Per-image maximum of ``(N, H, W)`` values."""
    return d.reshape(len(d), -1).max(axis=1)


@dataclass(frozen=True)
class BatchBound:
    """The estimate for a batch of images at one resolution.

    Attributes:
        low_size: ``(h, w)`` the images are down-sampled to.
        spacing: grid spacing ``(hy, hx)`` in reference pixels.
        rows, cols: the interior region (pixels between the first and last sample centres).
        bound: per image, the sup-norm estimate with whole-image maxima.
        mixed_term: per image, its fourth-order mixed part.
        pointwise: ``(N, rows, cols)`` cell-local bound at each interior pixel.
    """

    low_size: tuple[int, int]
    spacing: tuple[float, float]
    rows: slice
    cols: slice
    bound: np.ndarray
    mixed_term: np.ndarray
    pointwise: np.ndarray


def bilinear_bound(images: np.ndarray, low: tuple[int, int],
                   differences: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> BatchBound:
    """The bilinear interpolation error estimate of ``(N, H, W)`` images sampled to ``low``.

    Args:
        images: luminance in [0, 1], one image ``(H, W)`` or a batch ``(N, H, W)``.
        low: ``(h, w)`` of the down-sampled grid, each in ``[2, H]`` / ``[2, W]``.
        differences: :func:`second_differences` of ``images`` if already computed.

    Returns:
        A :class:`BatchBound` (a batch of one for a single image).
    """
    f = np.asarray(images, dtype=np.float64)
    f = f[None] if f.ndim == 2 else f
    if f.ndim != 3:
        raise InputImageError(f"expected (H, W) or (N, H, W) images, got shape {f.shape}")
    n, height, width = f.shape
    lo_h, lo_w = int(low[0]), int(low[1])
    if not (MIN_RESOLUTION <= lo_h <= height and MIN_RESOLUTION <= lo_w <= width):
        raise ResolutionError(f"cannot sample {height}×{width} images to {lo_h}×{lo_w}: each side "
                              f"must lie in [{MIN_RESOLUTION}, image side]")
    dxx, dyy, dxxyy = differences if differences is not None else second_differences(f)
    ay, ax = _axis(height, lo_h), _axis(width, lo_w)
    hy2, hx2 = ay.spacing ** 2, ax.spacing ** 2
    bound_mixed = hx2 * hy2 / 64.0 * _image_max(dxxyy)
    bound = hx2 / 8.0 * _image_max(dxx) + hy2 / 8.0 * _image_max(dyy) + bound_mixed
    cells = [_cell_max(_cell_max(d, ax, 2), ay, 1) for d in (dxx, dyy, dxxyy)]
    mxx, myy, mxxyy = (np.take(np.take(c, ay.cell, axis=1), ax.cell, axis=2) for c in cells)
    wx, wy = ax.omega[None, None, :], ay.omega[None, :, None]
    pointwise = wx / 2.0 * mxx + wy / 2.0 * myy + wx * wy / 4.0 * mxxyy
    return BatchBound((lo_h, lo_w), (ay.spacing, ax.spacing), slice(ay.first, ay.last + 1),
                      slice(ax.first, ax.last + 1), bound, bound_mixed, pointwise)


# ----------------------------------------------------------------------------- measurement
def down_up(images: np.ndarray, low: tuple[int, int], spec: ResizeSpec = CV2_BILINEAR) -> np.ndarray:
    """Down-sample ``(N, H, W)`` luminance images to ``low`` and back with ``spec``.

    OpenCV / PIL specs run on uint8 pixels (rounded, as a real pipeline); ``torch`` specs in
    floating point. Returns float64 ``(N, H, W)`` in [0, 1].
    """
    f = np.asarray(images, dtype=np.float64)
    f = f[None] if f.ndim == 2 else f
    low, size = (int(low[0]), int(low[1])), f.shape[-2:]
    if spec.backend == "torch":
        x = torch.from_numpy(f * 255.0)[:, None]
        back = resize_tensor(resize_tensor(x, low, spec), size, spec)[:, 0].double().numpy()
    else:
        pixels = np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
        back = np.stack([resize_array(resize_array(p, low, spec), size, spec) for p in pixels])
    return np.clip(back / 255.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True)
class UpsamplingRow:
    """Estimate and measured error at one resolution, averaged over images.

    Attributes:
        resolution: side (px) the reference-size images were down-sampled to.
        spacing: grid spacing ``h = S / r`` in reference pixels.
        bound: sup-norm estimate ``h²/8·(max|Δ²x f| + max|Δ²y f|) + h⁴/64·max|Δ²xΔ²y f|``.
        mixed_term: its fourth-order mixed part ``h⁴/64·max|Δ²xΔ²y f|``.
        pointwise_bound: mean over interior pixels of the cell-local bound.
        mae: measured mean absolute error over interior pixels.
        rmse: measured root-mean-square error over interior pixels.
        max_abs: measured largest absolute error over interior pixels.
        mae_full: measured mean absolute error over the whole image (borders included).
        within_bound: fraction of interior pixels whose measured error is at most their
            cell-local bound plus the pipeline's rounding (:func:`rounding_tolerance`).
    """

    resolution: int
    spacing: float
    bound: float
    mixed_term: float
    pointwise_bound: float
    mae: float
    rmse: float
    max_abs: float
    mae_full: float
    within_bound: float


@dataclass(frozen=True)
class UpsamplingReport:
    """Up-sampling error analysis of a set of images (see the module docstring).

    Attributes:
        rows: one :class:`UpsamplingRow` per resolution, ascending.
        images: number of images averaged.
        size: reference side ``S``.
        resize: the down/up :class:`ResizeSpec` as text (e.g. ``cv2:bilinear:noaa``).
        rescaled: images first scaled to the reference size.
        source: where the images came from (a folder, or a description).
    """

    rows: tuple[UpsamplingRow, ...]
    images: int
    size: int
    resize: str
    rescaled: int
    source: str

    def row(self, resolution: int) -> UpsamplingRow:
        """The row of ``resolution``."""
        for r in self.rows:
            if r.resolution == resolution:
                return r
        raise ResolutionError(f"resolution {resolution} was not analysed; "
                              f"analysed: {[r.resolution for r in self.rows]}")

    def meta(self) -> dict[str, Any]:
        """The settings, JSON-serialisable."""
        return {"images": self.images, "size": self.size, "resize": self.resize,
                "rescaled_to_size": self.rescaled, "reference_resize": str(REFERENCE_RESIZE),
                "source": self.source, "units": "luminance in [0, 1]",
                "estimate": "h^2/8 (max|D2x f| + max|D2y f|) + h^4/64 max|D2xD2y f| (derived "
                            "tensor-product bilinear bound; finite differences on the S grid)"}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: ``meta`` and ``rows``."""
        return {"meta": self.meta(), "rows": [asdict(r) for r in self.rows]}


def _groups(images: Sequence[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stacks of at most ``batch_size`` same-shape images, in first-seen shape order."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    for idx in by_shape.values():
        for start in range(0, len(idx), batch_size):
            yield np.stack([images[i] for i in idx[start:start + batch_size]])


_FIELDS = ("bound", "mixed_term", "pointwise_bound", "mae", "rmse", "max_abs", "mae_full",
           "within_bound")


def rounding_tolerance(spec: ResizeSpec) -> float:
    """Largest error a down-then-up pipeline adds by rounding, in [0, 1] luminance units.

    uint8 backends (OpenCV, PIL) round twice by at most half a level each; with bilinear
    weights (convex) the first rounding reaches the output at most unchanged: ``1/255``.
    ``torch`` resizes in float32: ``1e-6``.
    """
    return 1e-6 if spec.backend == "torch" else 1.0 / 255.0


def _batch_stats(batch: np.ndarray, low: tuple[int, int], spec: ResizeSpec,
                 differences: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    est = bilinear_bound(batch, low, differences)
    err = np.abs(down_up(batch, low, spec) - batch)
    inner = err[:, est.rows, est.cols].reshape(len(batch), -1)
    point = est.pointwise.reshape(len(batch), -1)
    return {"bound": est.bound, "mixed_term": est.mixed_term, "pointwise_bound": point.mean(1),
            "mae": inner.mean(1), "rmse": np.sqrt((inner ** 2).mean(1)), "max_abs": inner.max(1),
            "mae_full": err.reshape(len(batch), -1).mean(1),
            "within_bound": (inner <= point + rounding_tolerance(spec)).mean(1)}


def _check_backend(spec: ResizeSpec) -> None:
    if spec.backend == "cv2" and importlib.util.find_spec("cv2") is None:
        raise ConfigError(f"resize spec {spec} needs OpenCV (pip install opencv-python-headless); "
                          "or use torch:bilinear:noaa")


def analyse_images(images: Sequence[np.ndarray], resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
                   resize: ResizeSpec = CV2_BILINEAR, size: int = REFERENCE_SIZE,
                   batch_size: int = 128, progress: bool = False, source: str = "images"
                   ) -> UpsamplingReport:
    """Estimate and measure the up-sampling error of images at each resolution.

    Args:
        images: numpy images (see :func:`to_luminance`); any size, scaled to ``size`` on the
            longer side first when it differs.
        resolutions: sides (px, relative to ``size``) to down-sample to, each in ``[2, size]``.
        resize: the down- and up-sampling spec of the measurement.
        size: the reference side ``S``.
        batch_size: images processed together (memory: about 60 KB × ``S²/112²`` per image).
        progress: show a tqdm bar.
        source: recorded in the report.

    Returns:
        An :class:`UpsamplingReport`, rows by ascending resolution, values averaged over images.
    """
    from ..progress import progress_bar

    if isinstance(size, bool) or not isinstance(size, int) or size < 3:
        raise ConfigError(f"size must be an integer >= 3, got {size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(resize, ResizeSpec):
        raise ConfigError(f"resize must be a ResizeSpec, got {type(resize).__name__}")
    res = check_resolutions(resolutions, size)
    _check_backend(resize)
    lums = [to_luminance(img) for img in images]
    if not lums:
        raise DatasetError("no images to analyse")
    refs = [to_reference(lum, size) for lum in lums]
    rescaled = sum(a.shape != b.shape for a, b in zip(lums, refs))
    small = [r.shape for r in refs if min(r.shape) < 3]
    if small:
        raise InputImageError(f"images scaled to {size} px on the longer side must keep at least "
                              f"3 px on the shorter side; got shape {small[0]}")
    stats: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in res] for k in _FIELDS}
    with progress_bar(total=len(refs) * len(res), desc="up-sampling error", unit="img",
                      disable=not progress) as bar:
        for batch in _groups(refs, batch_size):
            diffs = second_differences(batch)
            for j, r in enumerate(res):
                low = low_size(batch.shape[1:], r, size)
                for key, values in _batch_stats(batch, low, resize, diffs).items():
                    stats[key][j].append(values)
                bar.update(len(batch))
    rows = tuple(UpsamplingRow(resolution=r, spacing=size / r,
                               **{k: float(np.concatenate(stats[k][j]).mean()) for k in _FIELDS})
                 for j, r in enumerate(res))
    return UpsamplingReport(rows, len(refs), size, str(resize), rescaled, source)


def analyse_folder(root: str | os.PathLike[str], resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
                   resize: ResizeSpec = CV2_BILINEAR, size: int = REFERENCE_SIZE,
                   limit: int | None = None, batch_size: int = 128, progress: bool = True
                   ) -> UpsamplingReport:
    """:func:`analyse_images` on the images under ``root`` (see :func:`list_images`)."""
    from ..progress import progress_bar

    check_resolutions(resolutions, size)
    _check_backend(resize)
    paths = list_images(root, limit)
    images = [load_luminance(p) for p in progress_bar(paths, desc="reading", unit="img", disable=not progress)]
    return analyse_images(images, resolutions, resize, size, batch_size, progress, source=str(root))
