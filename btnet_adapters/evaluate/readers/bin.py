"""insightface ``.bin`` verification sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

A ``.bin`` is a pickle of ``(images, issame)``: ``images`` holds ``2 × P`` encoded images
(JPEG/PNG bytes; images ``2i`` and ``2i + 1`` form pair ``i``), ``issame`` holds ``P`` booleans.
Files are read with :mod:`..safe_pickle` — never with plain ``pickle.load``. Sizes are bounded
before anything is copied: the file (:data:`~btnet_adapters._untrusted.MAX_BIN_BYTES`), the
number of pairs (:data:`~btnet_adapters._untrusted.MAX_BIN_PAIRS`) and the images' total size
(at most the file's own: references that repeat one image object many times are refused).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..._atomic import write_bytes_atomic
from ..._untrusted import MAX_BIN_BYTES, MAX_BIN_PAIRS
from ..errors import ProtocolFileError
from ..safe_pickle import PickleLimitError, safe_loads


@dataclass(frozen=True)
class VerificationBin:
    """A decoded-on-demand verification set.

    Attributes:
        images: ``2 × P`` encoded images; pair ``i`` is ``(images[2i], images[2i + 1])``.
        issame: ``P`` booleans, True for pairs of the same identity.
        name: a short name for tables (the file stem when read from disk).
    """

    images: tuple[bytes, ...]
    issame: np.ndarray
    name: str = "bin"

    def __len__(self) -> int:
        return int(self.issame.shape[0])

    def decode(self, index: int) -> np.ndarray:
        """Decode image ``index`` (0 … 2P−1) to an ``H×W×3`` RGB uint8 array."""
        return decode_image(self.images[index], what=f"{self.name} image {index}")

    def decode_pairs(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Decode every image: ``(first images, second images)`` of the pairs, RGB uint8."""
        firsts = [self.decode(2 * i) for i in range(len(self))]
        seconds = [self.decode(2 * i + 1) for i in range(len(self))]
        return firsts, seconds


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (OpenCV when installed, as mxnet did; else PIL)."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ProtocolFileError(f"{what} is not a decodable image ({len(data)} bytes)")
        return np.ascontiguousarray(bgr[..., ::-1])
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ProtocolFileError(f"{what} is not a decodable image: {exc}") from None


def _image_bytes(item: Any, index: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):  # Python 2 str, read as latin-1
        return item.encode("latin1")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise ProtocolFileError(f"image entry {index} has type {type(item).__name__}; expected "
                            f"encoded image bytes")


def _issame_array(raw: Any) -> np.ndarray:
    arr = np.asarray(raw)
    if arr.ndim != 1 or arr.dtype.kind not in "biu":
        raise ProtocolFileError(f"issame must be a flat list of booleans, got {arr.dtype} with "
                                f"shape {arr.shape}")
    if arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
        raise ProtocolFileError("issame holds values other than 0/1")
    return arr.astype(bool)


def _copied_bytes(raw_images: Sequence[Any]) -> int:
    """Bytes :func:`_image_bytes` would allocate: one copy per item, except ``bytes`` objects,
    which are kept as they are (a repeated reference to one costs nothing)."""
    total, seen = 0, set()
    for item in raw_images:
        if isinstance(item, bytes):
            if id(item) not in seen:
                seen.add(id(item))
                total += len(item)
        elif isinstance(item, (bytearray, str)):
            total += len(item)
        elif isinstance(item, np.ndarray):
            total += item.nbytes
    return total


def parse_bin(data: bytes, name: str = "bin") -> VerificationBin:
    """Parse the bytes of a ``.bin`` (see :func:`read_bin`).

    Raises:
        PickleLimitError: more than :data:`~btnet_adapters._untrusted.MAX_BIN_PAIRS` pairs, or
            images whose total size exceeds the data's (checked before any image is copied).
        ProtocolFileError: anything else malformed or unsafe.
    """
    obj = safe_loads(data)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ProtocolFileError(f"{name}: expected a pickled (images, issame) pair, got "
                                f"{type(obj).__name__}")
    raw_images, raw_issame = obj
    if not isinstance(raw_images, (list, tuple)):
        raise ProtocolFileError(f"{name}: images must be a list, got {type(raw_images).__name__}")
    if len(raw_images) > 2 * MAX_BIN_PAIRS:
        raise PickleLimitError(f"{name}: {len(raw_images):,} images, beyond the limit of {2 * MAX_BIN_PAIRS:,} "
                               f"({MAX_BIN_PAIRS:,} pairs)")
    issame = _issame_array(raw_issame)
    if issame.size > MAX_BIN_PAIRS:
        raise PickleLimitError(f"{name}: {issame.size:,} pairs, beyond the limit of {MAX_BIN_PAIRS:,}")
    if issame.size == 0:
        raise ProtocolFileError(f"{name}: the set has no pairs")
    if len(raw_images) != 2 * issame.size:
        raise ProtocolFileError(f"{name}: {issame.size} pairs need {2 * issame.size} images, "
                                f"found {len(raw_images)}")
    copied = _copied_bytes(raw_images)
    if copied > len(data):
        raise PickleLimitError(f"{name}: its images would take {copied:,} bytes, more than the {len(data):,} "
                               f"bytes of the file (one image referenced many times); accepted: each image "
                               f"stored once")
    images = tuple(_image_bytes(item, i) for i, item in enumerate(raw_images))
    return VerificationBin(images=images, issame=issame, name=name)


def read_bin(path: str | os.PathLike[str]) -> VerificationBin:
    """Read an insightface ``.bin`` verification set with the restricted unpickler.

    Raises:
        ProtocolFileError: the file is missing, is not the expected pickle, refers to any
            global other than the few plain types real files use, or is inconsistent.
    """
    path = Path(path)
    if not path.is_file():
        raise ProtocolFileError(f"verification set not found: {path}")
    size = path.stat().st_size
    if size > MAX_BIN_BYTES:
        raise PickleLimitError(f"{path}: {size:,} bytes, beyond the limit of {MAX_BIN_BYTES:,} bytes for a "
                               f"verification .bin (the standard sets are under 1 GB)")
    try:
        return parse_bin(path.read_bytes(), name=path.stem)
    except ProtocolFileError as exc:
        raise type(exc)(f"{path}: {exc}") from None


def _encode(image: Any, index: int, ext: str) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ProtocolFileError(f"image {index}: expected encoded bytes or an H×W(×3) uint8 "
                                f"RGB array, got {arr.dtype} {arr.shape}")
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if ext == ".jpg" else "PNG", quality=95)
    return buf.getvalue()


def write_bin(path: str | os.PathLike[str], images: Sequence[Any], issame: Sequence[bool],
              *, image_format: str = ".jpg") -> Path:
    """Write a ``.bin`` verification set atomically (pickle protocol 4, plain types only).

    Args:
        path: the output file.
        images: ``2 × P`` images: encoded bytes (kept as they are) or RGB uint8 arrays
            (encoded as ``image_format``); pair ``i`` is ``(images[2i], images[2i + 1])``.
        issame: ``P`` booleans.
        image_format: ``".jpg"`` (quality 95) or ``".png"`` for arrays.

    Returns:
        The written path. The file loads with insightface's own ``pickle.load`` as well.
    """
    if image_format not in (".jpg", ".png"):
        raise ProtocolFileError(f"image_format must be '.jpg' or '.png', got {image_format!r}")
    flags = [bool(x) for x in _issame_array(list(issame))]
    if not flags:
        raise ProtocolFileError("write_bin needs at least one pair")
    if len(images) != 2 * len(flags):
        raise ProtocolFileError(f"{len(flags)} pairs need {2 * len(flags)} images, got "
                                f"{len(images)}")
    blobs = [_encode(img, i, image_format) for i, img in enumerate(images)]
    return write_bytes_atomic(path, pickle.dumps((blobs, flags), protocol=4))
