"""Errors raised by :mod:`btnet_adapters.evaluate`.

Both subclass :class:`~btnet_adapters.errors.BTNetError` and ``ValueError``, so generic
handlers keep working.
"""

from __future__ import annotations

from ..errors import BTNetError


class ProtocolFileError(BTNetError, ValueError):
    """A protocol or dataset file is missing, malformed, unsafe, or names missing images."""


class EmbeddingError(BTNetError, ValueError):
    """Embeddings, scores, labels or metric values have the wrong shape, size, values
    (nan/inf, zero norm) or count, or do not fit together (e.g. a mated probe whose identity
    is not enrolled)."""
