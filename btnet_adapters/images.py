"""Turn user images (PIL, HWC arrays, CHW tensors) into float RGB tensors of pixel values."""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch

from .errors import InputImageError

ImageLike = Union["PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821

ACCEPTED = (
    "PIL images, H×W or H×W×C uint8 numpy arrays (C = 1, 3), or C×H×W tensors "
    "(uint8 in [0, 255] or float in [0, 1]; C = 1, 3)"
)


def to_pixels(image: Any, index: int = 0) -> torch.Tensor:
    """Convert one image to a float32 ``3×H×W`` RGB tensor with values in [0, 255].

    Grey images are repeated to three channels. ``index`` only names the image in errors.
    """
    where = f"image {index}"
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL without importing it
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputImageError(f"{where}: numpy images must be uint8, got {image.dtype}; accepted: {ACCEPTED}")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise InputImageError(f"{where}: numpy image has shape {image.shape}; accepted: {ACCEPTED}")
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    elif torch.is_tensor(image):
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise InputImageError(f"{where}: tensor image has shape {tuple(image.shape)}; accepted: {ACCEPTED}")
        if image.dtype == torch.uint8:
            chw = image.float()
        elif image.is_floating_point():
            chw = image.detach().float() * 255.0
        else:
            raise InputImageError(f"{where}: tensor dtype {image.dtype}; accepted: {ACCEPTED}")
    else:
        raise InputImageError(f"{where}: unsupported type {type(image).__name__}; accepted: {ACCEPTED}")
    if chw.shape[0] == 1:
        chw = chw.expand(3, -1, -1)
    if chw.shape[0] != 3:
        raise InputImageError(f"{where}: {chw.shape[0]} channels; accepted: 1 (grey) or 3 (RGB)")
    if chw.shape[1] < 1 or chw.shape[2] < 1:
        raise InputImageError(f"{where}: empty image of shape {tuple(chw.shape)}")
    if not torch.isfinite(chw).all():
        raise InputImageError(f"{where}: contains NaN or infinite values")
    return chw.contiguous()
