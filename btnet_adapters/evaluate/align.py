"""Five-point face alignment to the ArcFace template, at any output size.

The template is insightface's ``arcface_dst`` for 112×112 crops. For an ``r×r`` crop it is
mapped with pixel centres kept in place, ``(dst + 0.5)·r/112 − 0.5`` (the naive ``dst·r/112``
shifts the face by half a source pixel). The transform is the least-squares similarity
(rotation, uniform scale, translation; no reflection) of Umeyama (1991) — the estimate
``skimage.transform.SimilarityTransform`` makes for insightface.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputImageError

#: insightface's ArcFace 5-point template for 112×112 crops: left eye, right eye, nose tip,
#: left and right mouth corners (x, y).
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def arcface_template(size: int = 112) -> np.ndarray:
    """The 5-point template for a ``size × size`` crop (pixel-centre preserving mapping)."""
    if int(size) < 1:
        raise InputImageError(f"crop size must be >= 1 px, got {size}")
    return (ARCFACE_TEMPLATE_112 + 0.5) * (int(size) / 112.0) - 0.5


def landmarks_68_to_5(landmarks: Any) -> np.ndarray:
    """Reduce 68 iBUG landmarks to the 5 template points (eye centres, nose tip, mouth corners)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise InputImageError(f"expected 68 × 2 landmarks, got {lm.shape}")
    return np.stack([(lm[36] + lm[39]) / 2, (lm[42] + lm[45]) / 2, lm[30], lm[48], lm[54]])


def similarity_transform(src: Any, dst: Any) -> np.ndarray:
    """Least-squares similarity mapping ``src`` points onto ``dst`` (Umeyama), as a 2×3 matrix."""
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    if s.shape != d.shape or s.ndim != 2 or s.shape[1] != 2 or s.shape[0] < 2:
        raise InputImageError(f"need two matching N × 2 point sets (N >= 2), got {s.shape} and "
                              f"{d.shape}")
    if not (np.isfinite(s).all() and np.isfinite(d).all()):
        raise InputImageError("landmarks contain nan/inf")
    s_mean, d_mean = s.mean(0), d.mean(0)
    sc, dc = s - s_mean, d - d_mean
    var = (sc ** 2).sum() / s.shape[0]
    if var == 0:
        raise InputImageError("landmarks are all at one point; no transform exists")
    cov = dc.T @ sc / s.shape[0]
    sign = np.array([1.0, -1.0 if np.linalg.det(cov) < 0 else 1.0])  # no reflections
    u, sig, vt = np.linalg.svd(cov)
    if np.linalg.matrix_rank(cov) == 1:  # collinear points: the sign comes from U and V
        flip = 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0
        rot = u @ np.diag([1.0, flip]) @ vt
    else:
        rot = u @ np.diag(sign) @ vt
    scale = float(sig @ sign / var)
    return np.hstack([scale * rot, (d_mean - scale * rot @ s_mean)[:, None]])


def align_face(image: np.ndarray, landmarks: Any, size: int = 112, *,
               border_value: float = 0.0) -> np.ndarray:
    """Warp ``image`` so its 5 landmarks land on the ArcFace template of a ``size²`` crop.

    Args:
        image: ``H×W×C`` or ``H×W`` uint8 image (any channel order; it is kept).
        landmarks: ``5 × 2`` (or ``68 × 2``) landmark (x, y) pixel coordinates in ``image``.
        size: output crop size ``r`` — 112 for the trunk, or a branch resolution directly.
        border_value: fill outside the source image (insightface: 0).

    Returns:
        The ``size × size`` aligned crop (OpenCV ``warpAffine``, bilinear).
    """
    import cv2

    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.size == 0:
        raise InputImageError(f"expected an H×W or H×W×C image, got shape {img.shape}")
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (68, 2):
        lm = landmarks_68_to_5(lm)
    if lm.shape != (5, 2):
        raise InputImageError(f"expected 5 × 2 (or 68 × 2) landmarks, got {lm.shape}")
    matrix = similarity_transform(lm, arcface_template(size))
    return cv2.warpAffine(img, matrix, (int(size), int(size)), borderValue=border_value)
