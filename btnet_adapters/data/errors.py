"""Typed errors of the data package.

They extend :class:`btnet_adapters.errors.BTNetError` like every error of the package and the
builtin a caller would expect, so ``except FileNotFoundError`` / ``except ValueError`` keep
working.
"""

from __future__ import annotations

from ..errors import BTNetError


class DatasetError(BTNetError, ValueError):
    """A dataset is empty, inconsistent, or has labels outside the accepted range."""


class MissingDataError(DatasetError, FileNotFoundError):
    """A file or folder a dataset needs does not exist (the path is named)."""


class RecordIOError(DatasetError):
    """A RecordIO file is malformed at a given offset (bad magic, truncated record, ...)."""


class CorruptImageError(DatasetError):
    """An image cannot be read or decoded (its path or record is named)."""
