"""Resolution settings ``r1&r2`` of the multi-resolution 1:1 protocol."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class ResolutionSetting:
    """Setting ``r1&r2``: the first image of each pair at ``r1`` px, the second at ``r2`` px.

    In the reference only the second image is down-sampled (one step, OpenCV bilinear,
    no antialiasing) when ``r1`` is the full size; both are when ``r1 == r2 < full size``.
    """

    r1: int
    r2: int

    def __post_init__(self) -> None:
        if self.r1 < 1 or self.r2 < 1:
            raise ConfigError(f"resolutions must be >= 1 px, got {self.r1}&{self.r2}")

    @property
    def is_cross(self) -> bool:
        """True for a cross-resolution setting (``r1 != r2``)."""
        return self.r1 != self.r2

    def __str__(self) -> str:
        return f"{self.r1}&{self.r2}"


def parse_setting(text: str) -> ResolutionSetting:
    """Parse ``"112&7"`` (also ``"112-7"``, ``"112x7"``); a single number ``r`` means ``r&r``."""
    raw = text.strip()
    for sep in ("&", "-", "x"):
        if sep in raw:
            parts = raw.split(sep)
            break
    else:
        parts = [raw, raw]
    try:
        r1, r2 = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"a resolution setting looks like '112&7' or '14', "
                          f"got {text!r}") from None
    return ResolutionSetting(r1, r2)


def parse_settings(text: str) -> list[ResolutionSetting]:
    """Parse a comma-separated list such as ``"112&7,112&14,7&7,112&112"``."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError("no resolution settings given (e.g. '112&7,112&14,7&7')")
    return [parse_setting(t) for t in items]
