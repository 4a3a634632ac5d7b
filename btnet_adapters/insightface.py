"""insightface drop-in: a recognizer that embeds each detected face at its own resolution.

``app.models["recognition"] = BTNetRecognizer(model)`` in an insightface ``FaceAnalysis``: for
every face the detector finds, the recognizer picks a resolution from the detection (box side by
indicator + strategy, or the scale of the 5 landmarks), aligns the face **directly** at r×r
with the ArcFace template mapped as ``(dst + 0.5)·r/112 − 0.5`` (pixel centres stay aligned,
unlike the naive ``dst·r/112``) and embeds it through that branch; faces routed to the trunk are
aligned at 112×112 exactly as insightface's ``norm_crop``. ``face.embedding`` is the raw float32
embedding (as ``ArcFaceONNX`` sets it; compare with cosine / ``face.normed_embedding``).

BGR and RGB: insightface passes recognizers **BGR** uint8 images (OpenCV's order) and so does
this class — ``get``, ``get_feat`` and ``embed_crops`` take BGR, and the network (torch or ONNX)
always sees **RGB** ``(x − mean) / std``: the channels are swapped exactly once, when the batch is
normalised, like ``ArcFaceONNX``'s ``blobFromImages(swapRB=True)``. Crops from PIL or torchvision
are RGB: pass ``bgr=False`` to :meth:`BTNetRecognizer.embed_crops`.

Detectors rarely find faces below ~10 px; :meth:`BTNetRecognizer.embed_crops` embeds crops you
already have. With ``onnx_dir=`` the recognizer runs the files of
:func:`btnet_adapters.export.export_onnx` with onnxruntime; this module then never imports torch.

:func:`btnet_face_analysis` builds a ``FaceAnalysis`` around the recognizer: with the detector of
a model pack on disk (``~/.insightface/models/buffalo_l``), or with any detector object, such as
:class:`MTCNNDetector` (facenet-pytorch's MTCNN, whose weights ship in its wheel: works offline).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from . import routing
from .errors import ConfigError, InputImageError
from .export import OnnxBTNet, TorchBTNet

if TYPE_CHECKING:
    from .model import BTNet

__all__ = [
    "ARCFACE_DST",
    "SCALES",
    "BTNetRecognizer",
    "MTCNNDetector",
    "align_face",
    "alignment_matrix",
    "arcface_template",
    "btnet_face_analysis",
    "landmark_side",
    "load_arcface_torch",
    "similarity_transform",
]

#: insightface's 5-point ArcFace template for 112×112 crops (eyes, nose, mouth corners).
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
#: How a face's size is measured for routing: its detection box, or the scale of its landmarks.
SCALES = ("box", "landmarks")


def __getattr__(name: str) -> Any:
    if name == "load_arcface_torch":  # torch-dependent; imported on first use only
        from .checkpoints import load_arcface_torch

        return load_arcface_torch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- alignment
def arcface_template(size: int) -> np.ndarray:
    """The ArcFace template for a ``size``×``size`` crop: ``(dst + 0.5)·size/112 − 0.5``."""
    if size == 112:
        return ARCFACE_DST.astype(np.float64)
    return (ARCFACE_DST.astype(np.float64) + 0.5) * (size / 112.0) - 0.5


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto
    ``dst`` (Umeyama 1991, as ``skimage.transform.SimilarityTransform.estimate``); a 2×3 matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    variance = (src_c**2).sum(1).mean()
    if not variance > 0:
        raise InputImageError("the landmarks are all at one point; cannot align the face")
    cov = dst_c.T @ src_c / len(src)
    d = np.array([1.0, -1.0 if np.linalg.det(cov) < 0 else 1.0])
    u, s, vt = np.linalg.svd(cov)
    if np.linalg.matrix_rank(cov) == 1:  # collinear landmarks: the reflection sign comes from U, V
        rotation = u @ vt if np.linalg.det(u) * np.linalg.det(vt) > 0 else u @ np.diag([1.0, -1.0]) @ vt
    else:
        rotation = u @ np.diag(d) @ vt
    scale = (s @ d) / variance
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def _landmarks(kps: Any) -> np.ndarray:
    if kps is None:
        raise InputImageError(
            "the face has no 5-point landmarks (face.kps): BTNetRecognizer aligns with them like insightface's "
            "ArcFaceONNX. Use a detector that returns keypoints, or embed_crops() for faces already cropped"
        )
    points = np.asarray(kps, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise InputImageError(f"face landmarks must be 5 finite (x, y) points, got shape {points.shape}")
    return points


def alignment_matrix(kps: Any, size: int) -> np.ndarray:
    """2×3 matrix mapping image pixels onto the ``size``×``size`` ArcFace crop."""
    return similarity_transform(_landmarks(kps), arcface_template(size))


def align_face(img: np.ndarray, kps: Any, size: int) -> np.ndarray:
    """The face aligned directly at ``size``×``size`` (bilinear ``cv2.warpAffine``, black border)."""
    return cv2.warpAffine(img, alignment_matrix(kps, size), (size, size), borderValue=0.0)


def landmark_side(kps: Any) -> float:
    """Side (image pixels) of the region the 112×112 aligned crop covers: ``112 / scale``."""
    matrix = alignment_matrix(kps, 112)
    return 112.0 / float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def _check_image(img: Any, what: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        raise InputImageError(
            f"{what} must be an H×W×3 uint8 BGR array (cv2.imread order), got {type(img).__name__} "
            f"{getattr(img, 'dtype', '')} {shape if shape is not None else ''}"
        )
    if min(img.shape[:2]) < 1:
        raise InputImageError(f"{what} is empty: shape {img.shape}")
    return img


class BTNetRecognizer:
    """insightface recognizer (``taskname="recognition"``) over a BTNet or its ONNX export.

    Args:
        model: a BTNet (torch); put in eval mode.
        onnx_dir: a folder from :func:`~btnet_adapters.export.export_onnx` (onnxruntime, no torch).
        indicator: ``"max"``, ``"min"`` or ``"avg"`` of the box width and height.
        strategy: ``"ceil"``, ``"near"`` or ``"floor"`` allocation to the resolutions.
        scale: ``"box"`` routes by the detection box, ``"landmarks"`` by :func:`landmark_side`.
        providers: onnxruntime providers for ``onnx_dir`` (default: CPU).
        batch_size: crops per forward pass in :meth:`embed_crops`.

    Besides ``get`` / ``get_feat`` / ``forward`` / ``compute_sim`` / ``prepare``, it carries what
    code written for insightface's ``ArcFaceONNX`` reads: ``taskname``, ``model_file`` and
    ``session`` (the trunk's graph and onnxruntime session; ``None`` with a torch model),
    ``sessions`` (``{resolution: session}``, one per path), ``input_size``, ``input_shape``,
    ``input_mean`` / ``input_std`` (pixel units), ``input_name`` (``input_names``),
    ``output_names`` and ``output_shape``.
    """

    taskname = "recognition"

    def __init__(
        self,
        model: BTNet | None = None,
        onnx_dir: str | os.PathLike | None = None,
        indicator: str = "max",
        strategy: str = "ceil",
        scale: str = "box",
        providers: Sequence[Any] | None = None,
        batch_size: int = 64,
    ) -> None:
        if (model is None) == (onnx_dir is None):
            raise ConfigError("give exactly one of model= (a BTNet) or onnx_dir= (an export_onnx folder)")
        if indicator not in routing.INDICATORS:
            raise ConfigError(f"unknown indicator {indicator!r}; accepted: {routing.INDICATORS}")
        if strategy not in routing.STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; accepted: {routing.STRATEGIES}")
        if scale not in SCALES:
            raise ConfigError(f"unknown scale {scale!r}; accepted: {SCALES}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = TorchBTNet(model) if model is not None else OnnxBTNet(onnx_dir, providers)
        self.indicator, self.strategy, self.scale, self.batch_size = indicator, strategy, scale, batch_size
        self.resolutions: tuple[int, ...] = tuple(self.backend.resolutions)
        side = self.backend.input_size
        self.input_size = (side, side)
        self.input_shape = ["None", 3, side, side]
        self.output_shape = [1, self.backend.embed_dim]
        # What code written for insightface's ArcFaceONNX reads: the trunk's file and session
        # (None with a torch model); ``sessions`` has one onnxruntime session per resolution.
        onnx_backend = isinstance(self.backend, OnnxBTNet)
        self.model_file: str | None = str(self.backend.files[side]) if onnx_backend else None
        self.sessions: dict[int, Any] = self.backend.sessions if onnx_backend else {}
        self.session = self.sessions.get(side)
        self.input_name: str = self.backend.input_name if onnx_backend else "input"
        self.input_names = [self.input_name]
        self.output_names: list[str] = [self.backend.output_name if onnx_backend else "embedding"]
        mean, std = self.backend.mean, self.backend.std
        self.input_mean = float(mean[0]) if np.all(mean == mean[0]) else tuple(float(v) for v in mean)
        self.input_std = float(std[0]) if np.all(std == std[0]) else tuple(float(v) for v in std)

    def prepare(self, ctx_id: int = -1, **kwargs: Any) -> None:
        """Select the device: ``ctx_id < 0`` CPU, else GPU ``ctx_id`` when available."""
        self.backend.prepare(ctx_id)
        self.sessions = self.backend.sessions if isinstance(self.backend, OnnxBTNet) else {}
        self.session = self.sessions.get(self.input_size[0])

    # ------------------------------------------------------------------ routing
    def route(self, width: int, height: int) -> int:
        """The resolution for a face of ``width``×``height`` pixels."""
        return routing.select_resolution(max(1, int(round(width))), max(1, int(round(height))),
                                         self.resolutions, self.indicator, self.strategy)

    def face_resolution(self, face: Mapping[str, Any]) -> int:
        """The resolution a detected face goes to (by its box or its landmarks, see ``scale``)."""
        if self.scale == "landmarks":
            side = landmark_side(face.get("kps"))
            return self.route(side, side)
        box = face.get("bbox")
        if box is None:
            raise InputImageError("the face has no detection box (face.bbox); use scale='landmarks' or embed_crops()")
        x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).ravel()[:4])
        if not (np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1):
            raise InputImageError(f"invalid face box {[x1, y1, x2, y2]}; expected x1 < x2, y1 < y2")
        return self.route(x2 - x1, y2 - y1)

    # ------------------------------------------------------------------ embedding
    def _normalise(self, crops: Sequence[np.ndarray], bgr: bool) -> np.ndarray:
        batch = np.stack(crops).astype(np.float32)
        if bgr:
            batch = batch[..., ::-1]
        batch = (batch - self.backend.mean) / self.backend.std
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def _embed(self, resolution: int, crops: Sequence[np.ndarray], bgr: bool) -> np.ndarray:
        out = [self.backend.run(resolution, self._normalise(crops[i:i + self.batch_size], bgr))
               for i in range(0, len(crops), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def get(self, img: np.ndarray, face: Mapping[str, Any]) -> np.ndarray:
        """Align ``face`` (its ``kps``) in the BGR image at its resolution and set ``face.embedding``
        (raw float32, shape ``(D,)``) and ``face.btnet_resolution``; returns the embedding."""
        _check_image(img, "the image")
        kps = _landmarks(face.get("kps"))
        resolution = self.face_resolution(face)
        embedding = self._embed(resolution, [align_face(img, kps, resolution)], bgr=True)[0]
        face["embedding"] = embedding
        face["btnet_resolution"] = resolution
        return embedding

    def embed_crops(self, crops: Sequence[np.ndarray], bgr: bool = True) -> np.ndarray:
        """Raw embeddings ``(N, D)`` of face crops of any size (already cropped, e.g. aligned).

        Each crop is routed by its width and height, resized to its resolution with OpenCV
        (area when shrinking, bilinear when enlarging) and embedded through that path.
        """
        if len(crops) == 0:
            raise InputImageError("embed_crops() got no crops")
        crops = [_check_image(c, f"crop #{i}") for i, c in enumerate(crops)]
        targets = [self.route(c.shape[1], c.shape[0]) for c in crops]
        out = np.empty((len(crops), self.output_shape[1]), dtype=np.float32)
        for r in sorted(set(targets)):
            index = [i for i, t in enumerate(targets) if t == r]
            resized = [_resize(crops[i], r) for i in index]
            out[index] = self._embed(r, resized, bgr)
        return out

    def get_feat(self, imgs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """insightface's ``get_feat``: raw embeddings of BGR crops (one array or a list)."""
        return self.embed_crops([imgs] if isinstance(imgs, np.ndarray) else list(imgs), bgr=True)

    def forward(self, batch_data: np.ndarray) -> np.ndarray:
        """insightface's ``forward``: raw embeddings of an ``N×3×r×r`` batch of pixel values
        (0–255, the network's RGB order), ``r`` one of :attr:`resolutions`."""
        batch = np.asarray(batch_data, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[2] != batch.shape[3]:
            raise InputImageError(f"forward takes an N×3×r×r batch, got shape {batch.shape}")
        side = int(batch.shape[2])
        if side not in self.resolutions:
            raise InputImageError(f"forward takes sides {self.resolutions}, got {side}; use embed_crops() for other sizes")
        mean, std = self.backend.mean.reshape(1, -1, 1, 1), self.backend.std.reshape(1, -1, 1, 1)
        return self.backend.run(side, np.ascontiguousarray((batch - mean) / std)).astype(np.float32, copy=False)

    @staticmethod
    def compute_sim(feat1: np.ndarray, feat2: np.ndarray) -> float:
        """Cosine similarity of two embeddings."""
        a, b = np.ravel(feat1).astype(np.float64), np.ravel(feat2).astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
    h, w = crop.shape[:2]
    if (h, w) == (size, size):
        return crop
    shrink = h >= size and w >= size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- detection
class MTCNNDetector:
    """insightface detector (``taskname="detection"``) over facenet-pytorch's MTCNN.

    MTCNN's weights ship inside the ``facenet-pytorch`` wheel, so this detector works offline
    (insightface's own detector packs download at run time). facenet-pytorch pins old torch
    versions: install it with ``pip install --no-deps "facenet-pytorch>=2.5"`` (its other
    dependencies — torch, torchvision, pillow, numpy — are btnet_adapters' own). It runs on torch.

    ``detect`` follows insightface's interface: a BGR uint8 image in, ``(bboxes, kpss)`` out —
    ``bboxes`` ``N×5`` float32 ``x1, y1, x2, y2, score``, ``kpss`` ``N×5×2`` float32 landmarks in
    insightface's order (left eye, right eye, nose, left and right mouth corner, as seen in the
    image), best score first.

    Args:
        min_face_size: smallest face side MTCNN looks for, in pixels (its image pyramid starts at
            ``12 / min_face_size``; smaller values up-sample the image and take longer).
        thresholds: MTCNN's P-, R- and O-net score thresholds.
        factor: MTCNN's pyramid scale step.
        det_thresh: faces scoring below it are dropped (``FaceAnalysis.prepare(det_thresh=)``
            sets it, like insightface's detectors).
        device: torch device for MTCNN (``prepare(ctx_id)`` moves it: ``< 0`` CPU, else CUDA).
        mtcnn: an MTCNN instance to use instead of building one (``keep_all=True`` needed).
    """

    taskname = "detection"

    def __init__(self, min_face_size: int = 10, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, det_thresh: float = 0.5, device: Any = None, mtcnn: Any = None) -> None:
        if mtcnn is None:
            try:
                from facenet_pytorch.models.mtcnn import MTCNN
            except ImportError as err:
                raise ImportError(
                    "MTCNNDetector needs facenet-pytorch: pip install --no-deps 'facenet-pytorch>=2.5' "
                    "(--no-deps: it pins old torch versions; its other dependencies are already installed)"
                ) from err
            mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds), factor=factor,
                          post_process=False, device=device or "cpu")
        if not getattr(mtcnn, "keep_all", True):
            raise ConfigError("MTCNNDetector needs an MTCNN built with keep_all=True (it returns every face)")
        self.mtcnn = mtcnn
        self.det_thresh = float(det_thresh)
        self.input_size = None  # MTCNN runs an image pyramid on the whole image, any size
        self.input_mean, self.input_std = 127.5, 128.0  # what MTCNN's networks see (informative)

    def prepare(self, ctx_id: int = -1, det_thresh: float | None = None, **kwargs: Any) -> None:
        """``ctx_id < 0``: CPU, else CUDA device ``ctx_id`` when torch has one; ``det_thresh``
        replaces the score threshold. Other keywords (``input_size``) do not apply to MTCNN."""
        import torch

        device = torch.device(f"cuda:{ctx_id}" if ctx_id >= 0 and torch.cuda.is_available() else "cpu")
        self.mtcnn.to(device)
        self.mtcnn.device = device
        if det_thresh is not None:
            self.det_thresh = float(det_thresh)

    def detect(self, img: np.ndarray, max_num: int = 0, metric: str = "default",
               **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Faces of a BGR image: ``(bboxes N×5, kpss N×5×2)``, float32, best score first.

        ``max_num > 0`` keeps that many faces, chosen as insightface's SCRFD does (``metric="max"``:
        the largest boxes; otherwise the largest, favouring faces near the image centre).
        """
        import torch

        _check_image(img, "the image")
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        with torch.no_grad():
            boxes, probs, points = self.mtcnn.detect(rgb, landmarks=True)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        det = np.hstack([np.asarray(boxes, np.float32), np.asarray(probs, np.float32)[:, None]])
        kpss = np.asarray(points, np.float32).reshape(-1, 5, 2)
        keep = det[:, 4] >= self.det_thresh
        det, kpss = det[keep], kpss[keep]
        order = np.argsort(-det[:, 4], kind="stable")
        det, kpss = det[order], kpss[order]
        if max_num > 0 and len(det) > max_num:
            area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
            centre_y, centre_x = img.shape[0] // 2, img.shape[1] // 2
            offset = ((det[:, 0] + det[:, 2]) / 2 - centre_x) ** 2 + ((det[:, 1] + det[:, 3]) / 2 - centre_y) ** 2
            values = area if metric == "max" else area - 2.0 * offset
            chosen = np.argsort(values)[::-1][:max_num]
            det, kpss = det[chosen], kpss[chosen]
        return det, kpss


def btnet_face_analysis(
    recognizer: BTNetRecognizer,
    name: str = "buffalo_l",
    root: str | os.PathLike = "~/.insightface",
    *,
    detector: Any = None,
    allowed_modules: Sequence[str] = ("detection",),
    download: bool = False,
    **kwargs: Any,
) -> Any:
    """An insightface ``FaceAnalysis`` whose recognizer is ``recognizer`` (call ``app.prepare``).

    Without ``detector``: the detector (and any other ``allowed_modules``, e.g. ``"genderage"``,
    ``"landmark_2d_106"``) come from the model pack ``name`` under ``root/models`` — what
    ``FaceAnalysis(name, root)`` reads, e.g. ``~/.insightface/models/buffalo_l`` — or from
    ``name`` itself when it is a folder. The pack's own recognizer is never loaded. insightface
    downloads a missing pack; this function refuses instead unless ``download=True``.

    With ``detector`` (any object with insightface's detector interface, e.g.
    :class:`MTCNNDetector`): no model pack is read; the app holds that detector and ``recognizer``.

    Args:
        recognizer: the recognizer, set as ``app.models["recognition"]``.
        name: model pack name (or folder) for the detector.
        root: insightface's root folder (packs live in ``root/models/<name>``).
        detector: a detector object instead of a model pack.
        allowed_modules: pack modules to load (``"detection"`` is required; ``"recognition"``
            is dropped: ``recognizer`` replaces it).
        download: let insightface download a pack that is not on disk.
        **kwargs: passed to ``FaceAnalysis`` (e.g. ``providers``).

    Returns:
        The ``FaceAnalysis``; ``app.models`` holds the detector (+ other modules) and ``recognizer``.
    """
    from pathlib import Path

    from insightface.app import FaceAnalysis

    if getattr(recognizer, "taskname", None) != "recognition":
        raise ConfigError(f"recognizer must be a recognition model (taskname 'recognition'), got {type(recognizer).__name__}")
    if detector is not None:
        if getattr(detector, "taskname", None) != "detection" or not callable(getattr(detector, "detect", None)):
            raise ConfigError(f"detector must have taskname 'detection' and a detect() method, got {type(detector).__name__}")
        # FaceAnalysis.__init__ only reads a model pack; build the same object around the
        # detector instead (the attributes its prepare() and get() use).
        app = FaceAnalysis.__new__(FaceAnalysis)
        app.models, app.det_model = {"detection": detector}, detector
        app.addons, app.liveness_mode, app.model_package, app.model_dir = {}, "normal", None, None
    else:
        modules = [m for m in allowed_modules if m != "recognition"]
        if "detection" not in modules:
            raise ConfigError(f"allowed_modules must include 'detection', got {list(allowed_modules)}")
        direct = Path(str(name)).expanduser()
        pack = direct if direct.is_dir() else Path(root).expanduser() / "models" / str(name)
        if not pack.is_dir() and not download:
            raise ConfigError(
                f"no insightface model pack at {pack}; put {name} there (insightface downloads it on first use), "
                "pass download=True to let insightface download it now, or give detector= (e.g. MTCNNDetector())"
            )
        app = FaceAnalysis(name=str(name), root=str(root), allowed_modules=modules, **kwargs)
    app.models["recognition"] = recognizer
    return app
