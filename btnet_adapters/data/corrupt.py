"""Policy for images that cannot be read or decoded during a long run.

With the default ``action="replace"``, a sample whose image fails is reported (a ``WARNING`` on
the ``btnet_adapters.data.corrupt`` logger naming the file or record, and optionally a line in a
JSON-lines log file), remembered, and replaced by the next readable sample (index + 1, + 2, ...,
wrapping around), so the replacement is deterministic and a resumed run sees the same data. The
run stops with :class:`DatasetError` once more than ``max_fraction`` of the dataset has failed
(counted per process: each DataLoader worker counts what it has seen), since that points at a
broken dataset rather than a few bad files. ``action="raise"`` stops at the first failure.
Use :func:`find_corrupt` to check a whole source up front.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, TypeVar
from collections.abc import Callable

from ..progress import progress_bar

from ..errors import ConfigError
from .errors import CorruptImageError, DatasetError
from .sources import FaceSource

logger = logging.getLogger(__name__)
T = TypeVar("T")
ACTIONS = ("replace", "raise")


@dataclass(frozen=True)
class CorruptPolicy:
    """What to do with unreadable images.

    Args:
        action: ``"replace"`` (report, skip to the next readable sample) or ``"raise"``.
        max_fraction: with ``"replace"``, fail once more than this fraction of the samples
            has been found unreadable.
        max_tries: how many following samples to try before giving up on one index.
        log_path: optional JSON-lines file; one line per failure (appended, one ``write``
            per line, so several worker processes can share it).
    """

    action: str = "replace"
    max_fraction: float = 0.01
    max_tries: int = 32
    log_path: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"unknown corrupt-image action {self.action!r}; accepted: {ACTIONS}")
        if not 0.0 <= self.max_fraction <= 1.0:
            raise ConfigError(f"max_fraction must be in [0, 1], got {self.max_fraction}")
        if self.max_tries < 0:
            raise ConfigError(f"max_tries must be >= 0, got {self.max_tries}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CorruptPolicy":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {"action", "max_fraction", "max_tries", "log_path"}
        if unknown:
            raise ConfigError(f"unknown CorruptPolicy keys {sorted(unknown)}")
        return cls(**data)


#: Replace unreadable images, fail above 1 % of the dataset.
DEFAULT_POLICY = CorruptPolicy()


class CorruptTracker:
    """Applies a :class:`CorruptPolicy` to loads from a dataset of ``size`` samples.

    Attributes:
        failed: index → error message of every failure seen by this process.
    """

    def __init__(self, policy: CorruptPolicy, size: int) -> None:
        self.policy = policy
        self.size = size
        self.failed: dict[int, str] = {}

    def load(self, index: int, loader: Callable[[int], T]) -> tuple[T, int]:
        """``(loader(j), j)`` for the first readable ``j`` in ``index, index+1, ...``."""
        for step in range(self.policy.max_tries + 1):
            j = (index + step) % self.size
            if j in self.failed:
                continue
            try:
                return loader(j), j
            except CorruptImageError as exc:
                if self.policy.action == "raise":
                    raise
                self._record(j, index, str(exc))
        last = index + self.policy.max_tries
        raise DatasetError(f"no readable image among samples {index}..{last} (mod {self.size}); "
                           f"last error: {self.failed.get(j, 'already failed')}")

    def _record(self, j: int, requested: int, message: str) -> None:
        self.failed[j] = message
        logger.warning("unreadable image skipped (sample %d, requested %d): %s", j, requested,
                       message)
        if self.policy.log_path:
            line = json.dumps({"index": j, "error": message, "pid": os.getpid(),
                               "time": time.time()}) + "\n"
            fd = os.open(self.policy.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        if len(self.failed) > self.policy.max_fraction * self.size:
            examples = list(self.failed.values())[:3]
            raise DatasetError(
                f"{len(self.failed)} of {self.size} samples are unreadable, more than "
                f"max_fraction={self.policy.max_fraction}; the data looks broken (e.g. {examples})")


def find_corrupt(source: FaceSource, progress: bool = True) -> list[tuple[int, str]]:
    """Decode every sample of ``source``; return ``(index, error)`` for those that fail."""
    bad: list[tuple[int, str]] = []
    for i in progress_bar(range(len(source)), desc="checking images", unit="img", disable=not progress):
        try:
            source.load(i)
        except CorruptImageError as exc:
            bad.append((i, str(exc)))
    return bad
