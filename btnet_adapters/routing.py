"""Branch selection: map an image size to one of the model's resolutions.

A *resolution indicator* turns a (width, height) pair into one number ``r``; an
*allocation strategy* picks a resolution for ``r`` from a resolution set (the largest
one is the trunk size). On the reference set {7, 14, 28, 112} the strategies give the
reference's inclusive intervals::

    ceil   7: <=7    14: 8-14    28: 15-28    112: >=29
    near   7: <=10   14: 11-21   28: 22-70    112: >=71
    floor  7: <=13   14: 14-27   28: 28-111   112: >=112

Every input gets a resolution: sizes above the largest go to the largest, sizes below
the smallest to the smallest (the reference drops images above 1000 px; we do not).

The indicators in :data:`INDICATORS` depend on the size alone. The ``"effective"`` indicator
(:data:`EFFECTIVE`) also needs the image *content*: an image carries at most
``min(max(W, H), effective side)`` pixels of detail, where the effective side is estimated from
its pixels by :mod:`btnet_adapters.effective`. It has its own entry points,
:func:`select_resolutions_effective` / :func:`select_resolution_effective`, which take the
effective sides already measured; :func:`btnet_adapters.effective.route_effective` and
``BTNet.embed(indicator="effective")`` measure them and call these.
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable, Sequence

import numpy as np

from .errors import ConfigError, InputImageError

__all__ = [
    "EFFECTIVE",
    "INDICATORS",
    "STRATEGIES",
    "resolution_indicator",
    "select_resolution",
    "select_resolution_effective",
    "select_resolutions",
    "select_resolutions_effective",
]

# One vectorised function per indicator: (widths, heights) int64 arrays -> int64 array.
# A new indicator is added here and nowhere else.
_INDICATORS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "max": np.maximum,
    "min": np.minimum,
    "avg": lambda w, h: (w + h) // 2,
}
INDICATORS: tuple[str, ...] = tuple(_INDICATORS)
STRATEGIES: tuple[str, ...] = ("ceil", "near", "floor")
#: The content-based indicator: min(max(W, H), effective side); see select_resolutions_effective.
EFFECTIVE = "effective"


def _check_name(value: str, accepted: tuple[str, ...], what: str) -> None:
    if value == EFFECTIVE and what == "indicator":
        raise ConfigError(
            f"indicator {EFFECTIVE!r} needs the image content, not only its size; use "
            "BTNet.embed(indicator='effective'), btnet_adapters.effective.route_effective, or "
            "select_resolutions_effective with effective sides you measured"
        )
    if value not in accepted:
        raise ConfigError(f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")


def _resolution_array(resolutions: Sequence[int]) -> np.ndarray:
    """Validated, sorted, de-duplicated resolutions as an int64 array."""
    values = list(resolutions)
    if not values:
        raise ConfigError("resolutions must not be empty; give e.g. (7, 14, 28, 112)")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ConfigError(f"resolutions must be positive integers, got {value!r} in {values}")
    return np.unique(np.asarray(values, dtype=np.int64))


def _size_array(sizes: Sequence[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """Validated (N, 2) int64 array of (width, height) pairs."""
    try:
        array = np.asarray(sizes)
    except (TypeError, ValueError) as exc:
        raise InputImageError(f"sizes must be (width, height) pairs of shape (N, 2): {exc}") from exc
    if array.shape in ((0,), (0, 2)):  # no images; an empty list has a float dtype
        return np.zeros((0, 2), dtype=np.int64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise InputImageError(f"sizes must be (width, height) pairs of shape (N, 2), got shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise InputImageError(f"sizes must be integers (pixels), got dtype {array.dtype}")
    bad = np.flatnonzero((array < 1).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise InputImageError(
            f"width and height must be >= 1 px; size #{i} is {tuple(int(v) for v in array[i])} "
            f"({bad.size} invalid size(s) in total)"
        )
    return array.astype(np.int64, copy=False)


def _allocate(values: np.ndarray, resolutions: np.ndarray, strategy: str) -> np.ndarray:
    """Resolution per indicator value for a sorted resolution array."""
    last = len(resolutions) - 1
    upper = np.minimum(np.searchsorted(resolutions, values, side="left"), last)  # smallest >= r
    lower = np.maximum(np.searchsorted(resolutions, values, side="right") - 1, 0)  # largest <= r
    if strategy == "ceil":
        index = upper
    elif strategy == "floor":
        index = lower
    else:  # near: ties go down
        go_down = values - resolutions[lower] <= resolutions[upper] - values
        index = np.where(go_down, lower, upper)
    return resolutions[index]


def select_resolutions(
    sizes: Sequence[tuple[int, int]] | np.ndarray,
    resolutions: Sequence[int],
    indicator: str = "max",
    strategy: str = "ceil",
) -> np.ndarray:
    """Select a resolution for each (width, height) pair.

    Args:
        sizes: ``N`` pairs of (width, height) in pixels, or an ``(N, 2)`` integer array.
        resolutions: available resolutions (any order); the largest is the trunk size.
        indicator: one of :data:`INDICATORS` (``max``, ``min``, ``avg`` = floor((W+H)/2)).
        strategy: one of :data:`STRATEGIES` (``ceil``, ``near`` with ties down, ``floor``).

    Returns:
        int64 array of shape ``(N,)`` holding the selected resolution of each size.

    Raises:
        ConfigError: unknown indicator/strategy, or empty/non-positive resolutions.
        InputImageError: sizes not integer pairs, or a width/height below 1.
    """
    _check_name(indicator, INDICATORS, "indicator")
    _check_name(strategy, STRATEGIES, "strategy")
    table = _resolution_array(resolutions)
    array = _size_array(sizes)
    values = _INDICATORS[indicator](array[:, 0], array[:, 1])
    return _allocate(values, table, strategy)


def _check_side(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InputImageError(f"{name} must be an integer >= 1 px, got {value!r}")


def _one_size(width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` of one image, checked."""
    _check_side("width", width)
    _check_side("height", height)
    return int(width), int(height)


def resolution_indicator(width: int, height: int, indicator: str = "max") -> int:
    """The resolution indicator of one image size.

    Args:
        width: image width in pixels (>= 1).
        height: image height in pixels (>= 1).
        indicator: one of :data:`INDICATORS`.

    Returns:
        The indicator value in pixels.

    Raises:
        ConfigError: unknown indicator.
        InputImageError: width or height not an integer >= 1.
    """
    _check_name(indicator, INDICATORS, "indicator")
    width, height = _one_size(width, height)
    value = _INDICATORS[indicator](np.int64(width), np.int64(height))
    return int(value)


def select_resolution(
    width: int,
    height: int,
    resolutions: Sequence[int],
    indicator: str = "max",
    strategy: str = "ceil",
) -> int:
    """Select the resolution for one image of ``width`` x ``height`` pixels.

    See :func:`select_resolutions` for the arguments and errors.

    Returns:
        The selected resolution (an element of ``resolutions``).
    """
    return int(select_resolutions([_one_size(width, height)], resolutions, indicator, strategy)[0])


def _effective_array(effective_sides: Sequence[float] | np.ndarray, count: int) -> np.ndarray:
    """Validated float64 array of ``count`` effective sides (>= 1 px, or ``inf``)."""
    try:
        array = np.asarray(effective_sides, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputImageError(f"effective sides must be numbers (pixels), got {effective_sides!r}") from exc
    if array.size != count:
        raise InputImageError(f"got {array.size} effective side(s) for {count} image size(s); give one per image")
    bad = np.flatnonzero(np.isnan(array) | (array < 1))
    if bad.size:
        raise InputImageError(
            f"effective sides must be >= 1 px (or inf for 'not limited'); side #{int(bad[0])} is "
            f"{array[bad[0]]!r}"
        )
    return array


def select_resolutions_effective(
    sizes: Sequence[tuple[int, int]] | np.ndarray,
    effective_sides: Sequence[float] | np.ndarray,
    resolutions: Sequence[int],
    strategy: str = "ceil",
) -> np.ndarray:
    """Select a resolution for each image from its size *and* its effective side.

    An image can never carry more detail than its pixel size, so the indicator is
    ``floor(min(max(W, H), effective side))``; it is then allocated like the size-based
    indicators. Effective sides come from :func:`btnet_adapters.effective.effective_sides`
    (or any estimate of the pixels of detail an image holds); ``inf`` means "not limited by
    its content" and routes by ``max(W, H)`` alone.

    Args:
        sizes: ``N`` pairs of (width, height) in pixels, or an ``(N, 2)`` integer array.
        effective_sides: ``N`` effective sides in pixels (>= 1, or ``inf``).
        resolutions: available resolutions (any order); the largest is the trunk size.
        strategy: one of :data:`STRATEGIES`.

    Returns:
        int64 array of shape ``(N,)`` holding the selected resolution of each image.

    Raises:
        ConfigError: unknown strategy, or empty/non-positive resolutions.
        InputImageError: bad sizes, or effective sides that are not one number >= 1 per image.
    """
    _check_name(strategy, STRATEGIES, "strategy")
    table = _resolution_array(resolutions)
    array = _size_array(sizes)
    limits = _effective_array(effective_sides, len(array))
    values = np.floor(np.minimum(np.maximum(array[:, 0], array[:, 1]), limits)).astype(np.int64)
    return _allocate(values, table, strategy)


def select_resolution_effective(
    width: int,
    height: int,
    effective_side: float,
    resolutions: Sequence[int],
    strategy: str = "ceil",
) -> int:
    """Select the resolution for one image from its size and effective side.

    See :func:`select_resolutions_effective` for the arguments and errors.

    Returns:
        The selected resolution (an element of ``resolutions``).
    """
    return int(select_resolutions_effective([_one_size(width, height)], [effective_side], resolutions, strategy)[0])
