"""Seeded resolution sampling for multi-resolution training (the paper's φ_mr baselines).

Each sample draws its resolution from a generator seeded by ``(seed, epoch, index)``
(:func:`sample_rng`), so the draw depends neither on the worker process nor on the order in
which samples are fetched, and a resumed run replays exactly the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

#: The reference's multi-resolution settings (trunk size 112).
PRESETS: dict[str, tuple[tuple[int, ...], tuple[float, ...] | None]] = {
    "v1": ((112, 56, 28, 14, 7), None),
    "v2": ((112, 56, 28, 14, 7), (0.3, 0.25, 0.2, 0.15, 0.1)),
    "v3": (tuple(range(4, 113)), None),
}


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one sample: a function of ``(seed, epoch, index)`` only."""
    values = (seed, epoch, index)
    if any(not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise ConfigError(f"seed, epoch and index must be non-negative integers, got {values}")
    return np.random.default_rng([int(v) for v in values])


@dataclass(frozen=True)
class ResolutionSampler:
    """A distribution over square image sizes.

    Args:
        sizes: candidate sizes in pixels (each >= 1).
        probs: their probabilities (summing to 1); ``None`` for uniform.
        name: a label recorded with the run (``"v1"``, ``"v2"``, ``"v3"`` or ``"custom"``).
    """

    sizes: tuple[int, ...]
    probs: tuple[float, ...] | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        sizes = tuple(int(s) for s in self.sizes)
        if not sizes or any(s < 1 for s in sizes) or len(set(sizes)) != len(sizes):
            raise ConfigError(f"sizes must be distinct integers >= 1, got {self.sizes}")
        object.__setattr__(self, "sizes", sizes)
        if self.probs is not None:
            probs = tuple(float(p) for p in self.probs)
            if len(probs) != len(sizes) or any(p < 0 or not math.isfinite(p) for p in probs):
                raise ConfigError(
                    f"probs must be {len(sizes)} non-negative numbers, got {self.probs}")
            if abs(sum(probs) - 1.0) > 1e-6:
                raise ConfigError(f"probs must sum to 1, got {sum(probs)}")
            object.__setattr__(self, "probs", probs)

    @classmethod
    def preset(cls, name: str) -> "ResolutionSampler":
        """The reference's settings: ``"v1"`` uniform over {112, 56, 28, 14, 7}; ``"v2"`` the
        same sizes with probabilities [0.3, 0.25, 0.2, 0.15, 0.1]; ``"v3"`` any size 4..112."""
        if name not in PRESETS:
            raise ConfigError(
                f"unknown multi-resolution preset {name!r}; accepted: {sorted(PRESETS)}")
        sizes, probs = PRESETS[name]
        return cls(sizes, probs, name)

    @classmethod
    def fixed(cls, size: int) -> "ResolutionSampler":
        """Always ``size`` (e.g. one independent φ_mm model per resolution)."""
        return cls((size,), None, f"fixed{int(size)}")

    @property
    def max_size(self) -> int:
        """The largest size that can be drawn."""
        return max(self.sizes)

    def sample(self, rng: np.random.Generator) -> int:
        """Draw one size."""
        if self.probs is None:
            return self.sizes[int(rng.integers(len(self.sizes)))]
        return self.sizes[int(rng.choice(len(self.sizes), p=np.asarray(self.probs)))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"name": self.name, "sizes": list(self.sizes),
                "probs": list(self.probs) if self.probs is not None else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResolutionSampler":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {"name", "sizes", "probs"}
        if unknown:
            raise ConfigError(f"unknown ResolutionSampler keys {sorted(unknown)}")
        probs: Sequence[float] | None = data.get("probs")
        return cls(tuple(data["sizes"]), tuple(probs) if probs is not None else None,
                   data.get("name", "custom"))
