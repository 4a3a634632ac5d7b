"""Explicit, recorded image resampling.

The reference implementation resizes with different libraries in different places
(PIL antialiased bilinear for the trunk, non-antialiased tensor resizes for the branches,
OpenCV bilinear for verification, PIL bicubic for SurvFace). The numbers depend on it, so
every model and protocol here carries a :class:`ResizeSpec` naming the library, the filter
and whether downscaling is antialiased.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, InputImageError

BACKENDS = ("torch", "pil", "cv2")
FILTERS = ("bilinear", "bicubic", "area", "nearest")


@dataclass(frozen=True)
class ResizeSpec:
    """How images are resampled.

    Args:
        backend: ``"torch"`` (``F.interpolate`` on float tensors, no rounding),
            ``"pil"`` (``Image.resize`` on uint8) or ``"cv2"`` (``cv2.resize`` on uint8).
        filter: ``"bilinear"``, ``"bicubic"``, ``"area"`` or ``"nearest"``.
        antialias: low-pass filter when downscaling. PIL always antialiases bilinear/bicubic
            downscaling; OpenCV never does (use ``filter="area"`` there).
    """

    backend: str = "torch"
    filter: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown resize backend {self.backend!r}; accepted: {BACKENDS}")
        if self.filter not in FILTERS:
            raise ConfigError(f"unknown resize filter {self.filter!r}; accepted: {FILTERS}")
        smooth = self.filter in ("bilinear", "bicubic")
        if self.backend == "pil" and smooth and not self.antialias:
            raise ConfigError(
                "PIL always antialiases bilinear/bicubic downscaling; use backend='torch' or "
                "'cv2' for non-antialiased resizing"
            )
        if self.backend == "cv2" and self.antialias and self.filter != "area":
            raise ConfigError(
                "OpenCV's resize has no antialias option; use filter='area' or antialias=False"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (recorded in configs and adapter files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResizeSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {"backend", "filter", "antialias"}
        if unknown:
            raise ConfigError(f"unknown ResizeSpec keys {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def parse(cls, text: str) -> "ResizeSpec":
        """Inverse of ``str(spec)``: ``backend:filter:aa|noaa``, e.g. ``cv2:bilinear:noaa``."""
        parts = text.strip().split(":")
        if len(parts) != 3 or parts[2] not in ("aa", "noaa"):
            raise ConfigError(f"a resize spec looks like 'cv2:bilinear:noaa' or 'pil:bicubic:aa' "
                              f"(backend:filter:aa|noaa), got {text!r}")
        return cls(parts[0], parts[1], antialias=parts[2] == "aa")

    def __str__(self) -> str:
        return f"{self.backend}:{self.filter}:{'aa' if self.antialias else 'noaa'}"


#: The reference's verification protocol: one-step OpenCV bilinear, no antialiasing.
CV2_BILINEAR = ResizeSpec("cv2", "bilinear", antialias=False)
#: The reference's branch training: tensor bilinear resize without antialiasing.
TORCH_BILINEAR = ResizeSpec("torch", "bilinear", antialias=False)
#: The reference's trunk training (torchvision on PIL images): antialiased bilinear.
PIL_BILINEAR = ResizeSpec("pil", "bilinear", antialias=True)
#: The reference's QMUL-SurvFace identification: PIL bicubic.
PIL_BICUBIC = ResizeSpec("pil", "bicubic", antialias=True)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise InputImageError(f"target size must be >= 1 pixel, got {size}")
    return h, w


def resize_array(image: np.ndarray, size: int | tuple[int, int], spec: ResizeSpec) -> np.ndarray:
    """Resize an ``H×W×C`` (or ``H×W``) uint8 image to ``size`` (int or ``(h, w)``).

    Returns uint8 of the same layout. The torch backend computes in float and rounds back.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise InputImageError("resize_array expects an H×W or H×W×C numpy array")
    if image.dtype != np.uint8:
        raise InputImageError(f"resize_array expects uint8 pixels, got {image.dtype}")
    h, w = _size_hw(size)
    if image.shape[:2] == (h, w):
        return image.copy()
    if spec.backend == "cv2":
        import cv2

        flags = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                 "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}[spec.filter]
        out = cv2.resize(image, (w, h), interpolation=flags)
        return out.reshape(h, w, *image.shape[2:])
    if spec.backend == "pil":
        from PIL import Image

        flags = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                 "area": Image.Resampling.BOX, "nearest": Image.Resampling.NEAREST}[spec.filter]
        squeeze = image.ndim == 3 and image.shape[2] == 1
        pil = Image.fromarray(image[..., 0] if squeeze else image)
        out = np.array(pil.resize((w, h), resample=flags))
        return out[..., None] if squeeze else out
    chw = torch.from_numpy(np.ascontiguousarray(image)).float()
    chw = chw[None] if image.ndim == 2 else chw.permute(2, 0, 1)
    out = resize_tensor(chw, (h, w), spec).round().clamp(0, 255).to(torch.uint8)
    out = out[0] if image.ndim == 2 else out.permute(1, 2, 0)
    return out.numpy()


def resize_tensor(x: torch.Tensor, size: int | tuple[int, int], spec: ResizeSpec) -> torch.Tensor:
    """Resize a float ``C×H×W`` or ``B×C×H×W`` tensor.

    The torch backend runs ``F.interpolate`` directly (no rounding). PIL / OpenCV specs are
    applied per image on a uint8 round-trip of values in [0, 255] (the tensor must hold such
    values), so a protocol can use the exact library the reference used.
    """
    if not torch.is_tensor(x) or x.ndim not in (3, 4):
        raise InputImageError("resize_tensor expects a C×H×W or B×C×H×W tensor")
    h, w = _size_hw(size)
    batched = x.ndim == 4
    xb = x if batched else x[None]
    if tuple(xb.shape[-2:]) == (h, w):
        return x.clone()
    if spec.backend == "torch":
        mode = spec.filter
        kwargs: dict[str, Any] = {}
        if mode in ("bilinear", "bicubic"):
            kwargs = {"align_corners": False, "antialias": spec.antialias}
        out = F.interpolate(xb.float(), size=(h, w), mode=mode, **kwargs)
    else:
        imgs = []
        for img in xb:
            arr = img.detach().permute(1, 2, 0).cpu().round().clamp(0, 255).to(torch.uint8).numpy()
            res = resize_array(arr, (h, w), spec)
            res = res[..., None] if res.ndim == 2 else res
            imgs.append(torch.from_numpy(res).permute(2, 0, 1).float())
        out = torch.stack(imgs).to(x.device)
    return out if batched else out[0]
