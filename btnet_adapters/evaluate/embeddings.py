"""Embedding checks, L2 normalisation and flip test-time augmentation."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import EmbeddingError


def as_embeddings(x: Any, name: str = "embeddings", *, dim: int | None = None,
                  allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a finite 2-D float array (``N × D``), or raise :class:`EmbeddingError`.

    Accepts numpy arrays, nested sequences and tensors with ``.numpy()`` (moved to CPU).
    Keeps float32/float64, converts other dtypes to float64.

    Args:
        x: the embeddings.
        name: what to call them in error messages.
        dim: the required embedding size ``D`` (checked when given).
        allow_empty: accept ``N == 0``.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise EmbeddingError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise EmbeddingError(f"{name} must be a 2-D array (N × D), got shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise EmbeddingError(f"{name} is empty (0 rows)")
    if arr.shape[1] == 0:
        raise EmbeddingError(f"{name} has embedding size 0")
    if dim is not None and arr.shape[1] != dim:
        raise EmbeddingError(f"{name} have size {arr.shape[1]} but {dim} is required "
                             f"(all embeddings of one evaluation must come from one space)")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise EmbeddingError(f"{name} contain nan/inf in {rows.size} row(s), first rows "
                             f"{rows[:5].tolist()}")
    return arr


def l2_normalize(x: Any, name: str = "embeddings") -> np.ndarray:
    """Validate and L2-normalise each row; zero-norm rows raise :class:`EmbeddingError`."""
    arr = as_embeddings(x, name, allow_empty=True)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        rows = np.flatnonzero(zero)
        raise EmbeddingError(f"{name} have zero norm in {rows.size} row(s), first rows "
                             f"{rows[:5].tolist()}; they cannot be normalised")
    return arr / norms


def flip_tta(raw: Any, raw_flipped: Any) -> np.ndarray:
    """Flip test-time augmentation: sum the raw embeddings of an image and its mirror, normalise.

    This is the reference's rule (``emb(x) + emb(flip(x))``, then L2-normalised); the
    inputs must be the *raw* (un-normalised) network outputs, row-aligned.
    """
    a = as_embeddings(raw, "embeddings")
    b = as_embeddings(raw_flipped, "flipped embeddings", dim=a.shape[1])
    if a.shape[0] != b.shape[0]:
        raise EmbeddingError(f"flip TTA needs one flipped embedding per image: got {a.shape[0]} "
                             f"and {b.shape[0]} rows")
    return l2_normalize(a + b, "flip-summed embeddings")
