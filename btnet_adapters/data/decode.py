"""Decoding encoded images to RGB uint8 arrays (PIL, no OpenCV needed)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CorruptImageError

#: File extensions (lower case) treated as images when listing folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".pnm", ".bmp", ".webp",
                    ".tif", ".tiff")

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_format(data: bytes) -> str:
    """``"jpeg"``, ``"png"`` or ``"other"`` from the leading bytes."""
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    return "other"


def decode_image(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Decode JPEG / PNG / PGM / BMP / ... bytes to an ``H×W×3`` RGB uint8 array.

    Grey images (e.g. ORL ``.pgm``) are repeated over three channels; alpha is dropped.

    Raises:
        CorruptImageError: the bytes are not a complete, decodable 8-bit image (``where``
            names the file or record in the message).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1"):
                raise CorruptImageError(f"{where}: unsupported image mode {img.mode!r}; "
                                        "accepted: 8-bit grey, palette, RGB, RGBA, CMYK")
            rgb = img.convert("RGB")
    except CorruptImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(f"{where}: cannot decode image ({exc})") from None
    array = np.array(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise CorruptImageError(f"{where}: decoded to an empty image of shape {array.shape}")
    return array


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of an ``H×W×3`` (or ``H×W``) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an ``H×W×3`` (or ``H×W``) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
