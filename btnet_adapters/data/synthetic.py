"""Small synthetic face-like datasets for tests, demos and smoke runs.

Each identity is a smooth random colour pattern (a 7×7 grid of colours up-sampled to the image
size), so identities stay distinguishable down to 7 px and a classifier can learn them; each
image of an identity adds its own brightness shift and pixel noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .._atomic import write_bytes_atomic
from .decode import encode_jpeg, encode_png

FORMATS = {"png": ".png", "jpeg": ".jpg", "pgm": ".pgm"}


def synthetic_image(identity: int, sample: int, size: int = 112, seed: int = 0) -> np.ndarray:
    """The ``sample``-th ``size×size×3`` uint8 image of ``identity`` (deterministic)."""
    base_rng = np.random.default_rng([seed, identity])
    grid = torch.from_numpy(base_rng.uniform(40, 215, size=(1, 3, 7, 7)).astype(np.float32))
    pattern = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0]
    rng = np.random.default_rng([seed, identity, sample + 1])
    image = pattern.numpy().transpose(1, 2, 0) + rng.uniform(-20, 20)
    image = image + rng.normal(0, 6, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_synthetic_folder(root: str | os.PathLike[str], num_identities: int = 4,
                           per_identity: int = 3, size: int = 112, seed: int = 0,
                           image_format: str = "png") -> Path:
    """Write ``root/id0000/0000.png ...``: ``num_identities`` × ``per_identity`` images.

    Args:
        root: destination folder (created).
        num_identities: number of identity sub-folders.
        per_identity: images per identity.
        size: image side in pixels.
        seed: changes every pattern.
        image_format: ``"png"`` (lossless), ``"jpeg"`` or ``"pgm"`` (grey).

    Returns:
        ``root`` as a :class:`~pathlib.Path` (open it with ``ImageFolderSource``).
    """
    if image_format not in FORMATS:
        raise ConfigError(f"unknown image_format {image_format!r}; accepted: {sorted(FORMATS)}")
    if num_identities < 1 or per_identity < 1 or size < 1:
        raise ConfigError("num_identities, per_identity and size must be >= 1")
    out = Path(root)
    for k in range(num_identities):
        folder = out / f"id{k:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_identity):
            image = synthetic_image(k, i, size, seed)
            if image_format == "pgm":
                data = _encode_pgm(image.mean(axis=2).round().astype(np.uint8))
            elif image_format == "jpeg":
                data = encode_jpeg(image)
            else:
                data = encode_png(image)
            write_bytes_atomic(folder / f"{i:04d}{FORMATS[image_format]}", data)
    return out


def _encode_pgm(grey: np.ndarray) -> bytes:
    """Binary PGM (P5) bytes of an ``H×W`` uint8 array."""
    h, w = grey.shape
    return f"P5\n{w} {h}\n255\n".encode("ascii") + grey.tobytes()
