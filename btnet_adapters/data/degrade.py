"""Resolution degradation as an explicit, recorded setting.

The reference trains its multi-resolution trunk on PIL-antialiased bilinear images brought back
to 112 and its branches on non-antialiased tensor resizes, and the numbers depend on it. A
:class:`DegradationSpec` names the down-sampling (library, filter, antialias, through
:class:`btnet_adapters.resize.ResizeSpec`) and whether and how the image goes back up to the
trunk size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, ResolutionError
from ..resize import PIL_BILINEAR, TORCH_BILINEAR, ResizeSpec, resize_tensor


@dataclass(frozen=True)
class DegradationSpec:
    """How an image of the trunk size becomes an ``r×r`` image.

    Args:
        resize: the down-sampling to ``r`` (backend ``torch`` / ``pil`` / ``cv2``, filter
            ``bilinear`` / ``bicubic`` / ``area`` / ``nearest``, antialias on/off).
        upsample: bring the ``r×r`` image back to the trunk size (the paper's up-sampling
            baselines and φ_mr trunk); ``False`` keeps it at ``r`` (branch inputs).
        upsample_resize: the up-sampling; ``None`` uses ``resize``.

    Images are float ``C×H×W`` tensors with values in [0, 255]. The ``torch`` backend works on
    them directly (no rounding); ``pil`` and ``cv2`` round to uint8 around each resize, as those
    libraries do.
    """

    resize: ResizeSpec = PIL_BILINEAR
    upsample: bool = True
    upsample_resize: ResizeSpec | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.resize, ResizeSpec):
            raise ConfigError(f"resize must be a ResizeSpec, got {type(self.resize).__name__}")
        if self.upsample_resize is not None and not isinstance(self.upsample_resize, ResizeSpec):
            raise ConfigError("upsample_resize must be a ResizeSpec or None")

    def output_size(self, resolution: int, size: int) -> int:
        """Side of the output for an image degraded to ``resolution`` (trunk size ``size``)."""
        return size if self.upsample else resolution

    def apply(self, image: torch.Tensor, resolution: int, size: int) -> torch.Tensor:
        """Down-sample ``image`` (``C×size×size``, values 0..255) to ``resolution`` and, with
        ``upsample``, back to ``size``. ``resolution == size`` returns the image unchanged."""
        if not 1 <= resolution <= size:
            raise ResolutionError(f"resolution {resolution} is outside 1..{size} (the trunk size)")
        if resolution == size:
            return image
        low = resize_tensor(image, resolution, self.resize)
        if not self.upsample:
            return low
        return resize_tensor(low, size, self.upsample_resize or self.resize)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"resize": self.resize.to_dict(), "upsample": self.upsample,
                "upsample_resize": self.upsample_resize.to_dict() if self.upsample_resize else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DegradationSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {"resize", "upsample", "upsample_resize"}
        if unknown:
            raise ConfigError(f"unknown DegradationSpec keys {sorted(unknown)}")
        up = data.get("upsample_resize")
        return cls(ResizeSpec.from_dict(data["resize"]), bool(data.get("upsample", True)),
                   ResizeSpec.from_dict(up) if up is not None else None)

    def __str__(self) -> str:
        up = f"up {self.upsample_resize or self.resize}" if self.upsample else "no upsampling"
        return f"down {self.resize}, {up}"


#: The reference's multi-resolution trunk (φ_mr): PIL antialiased bilinear down and back up.
TRUNK_DEGRADATION = DegradationSpec(PIL_BILINEAR, upsample=True)
#: The reference's branch inputs: tensor bilinear without antialiasing, kept at ``r``.
BRANCH_DEGRADATION = DegradationSpec(TORCH_BILINEAR, upsample=False)
