"""Turn user images (PIL, HWC arrays, CHW tensors) into float RGB tensors of pixel values.

The input contract of ``BTNet.embed`` lives here: what one image is (:func:`to_pixels`) and
what a collection of images is (:func:`image_list`). Anything ambiguous is refused with an
:class:`~btnet_adapters.errors.InputImageError` that says what is accepted — never guessed into
embeddings of rows or channels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Union

import numpy as np
import torch

from .errors import InputImageError

ImageLike = Union["PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821

ACCEPTED = (
    "PIL images, H×W or H×W×C uint8 numpy arrays (C = 1, 3), or C×H×W tensors "
    "(uint8 in [0, 255] or float in [0, 1]; C = 1, 3)"
)
COLLECTIONS = (
    "a list or tuple of images, one image (PIL, H×W(×C) array, C×H×W tensor), an N×H×W×C uint8 "
    "array or an N×C×H×W tensor"
)
#: Slack for float pixels that went through arithmetic (1.0000001 is still 1).
FLOAT_TOLERANCE = 1e-4
_CHANNELS = (1, 3)


def _is_pil(obj: Any) -> bool:
    return hasattr(obj, "convert") and hasattr(obj, "size") and hasattr(obj, "mode")


def image_list(images: Any) -> list[Any]:
    """The images in ``images`` as a list, one entry per image.

    One image not in a list (a PIL image, an H×W or H×W×C array, a C×H×W tensor) is one image;
    an N×H×W×C array or an N×C×H×W tensor is N images; lists and tuples (and other iterables
    with an order) hold one image per entry. Strings, mappings, sets and ``None`` are refused.
    """
    if images is None:
        raise InputImageError(f"embed() got None; accepted: {COLLECTIONS}")
    if _is_pil(images):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise InputImageError(f"embed() got a {images.ndim}-d array of shape {images.shape}; accepted: {COLLECTIONS}")
    if torch.is_tensor(images):
        if images.ndim == 4:
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise InputImageError(f"embed() got a {images.ndim}-d tensor of shape {tuple(images.shape)}; "
                              f"accepted: {COLLECTIONS}")
    if isinstance(images, (str, bytes, Mapping, set, frozenset)) or not isinstance(images, Iterable):
        hint = " (file paths are not opened: read them with PIL.Image.open first)" if isinstance(images, str) else ""
        raise InputImageError(f"embed() got {type(images).__name__}{hint}; accepted: {COLLECTIONS}")
    return list(images)


def _layout_hint(shape: tuple[int, ...], numpy: bool) -> str:
    if len(shape) != 3:
        return ""
    if numpy and len(shape) == 3 and shape[0] in _CHANNELS and shape[2] not in _CHANNELS:
        return " — it looks like C×H×W: numpy images are H×W×C, use array.transpose(1, 2, 0)"
    if not numpy and len(shape) == 3 and shape[2] in _CHANNELS and shape[0] not in _CHANNELS:
        return " — it looks like H×W×C: tensors are C×H×W, use tensor.permute(2, 0, 1)"
    return f" ({shape[2] if numpy else shape[0]} channels)"


def _float_pixels(image: torch.Tensor, where: str) -> torch.Tensor:
    lo, hi = float(image.min()), float(image.max())
    if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
        raise InputImageError(
            f"{where}: float tensor values span [{lo:.4g}, {hi:.4g}]; float images must be in [0, 1]. "
            "Pass uint8 pixels (0-255) as a uint8 tensor, divide float pixels by 255 (x / 255), or call "
            "the model directly (model(x)) with tensors you normalised yourself"
        )
    return image.detach().float().clamp(0, 1) * 255.0


def to_pixels(image: Any, index: int = 0) -> torch.Tensor:
    """Convert one image to a float32 ``3×H×W`` RGB tensor with values in [0, 255].

    Grey images are repeated to three channels. ``index`` only names the image in errors.
    """
    where = f"image {index}"
    if _is_pil(image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputImageError(f"{where}: numpy images must be uint8, got {image.dtype}; accepted: {ACCEPTED}")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] not in _CHANNELS:
            raise InputImageError(f"{where}: numpy image has shape {image.shape}"
                                  f"{_layout_hint(image.shape, True)}; accepted: {ACCEPTED}")
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    elif torch.is_tensor(image):
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3 or image.shape[0] not in _CHANNELS:
            raise InputImageError(f"{where}: tensor image has shape {tuple(image.shape)}"
                                  f"{_layout_hint(tuple(image.shape), False)}; accepted: {ACCEPTED}")
        if image.numel() == 0:
            raise InputImageError(f"{where}: empty image of shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            chw = image.detach().float()
        elif image.is_floating_point():
            if not torch.isfinite(image).all():
                raise InputImageError(f"{where}: contains NaN or infinite values")
            chw = _float_pixels(image, where)
        else:
            raise InputImageError(f"{where}: tensor dtype {image.dtype}; accepted: {ACCEPTED}")
    else:
        raise InputImageError(f"{where}: unsupported type {type(image).__name__}; accepted: {ACCEPTED}")
    if chw.shape[0] == 1:
        chw = chw.expand(3, -1, -1)
    if chw.shape[1] < 1 or chw.shape[2] < 1:
        raise InputImageError(f"{where}: empty image of shape {tuple(chw.shape)}")
    if not torch.isfinite(chw).all():
        raise InputImageError(f"{where}: contains NaN or infinite values")
    return chw.contiguous()
