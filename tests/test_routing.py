"""Tests of branch selection (resolution indicators and allocation strategies)."""

from __future__ import annotations

import numpy as np
import pytest

from btnet_adapters.errors import ConfigError, InputImageError
from btnet_adapters.routing import (
    INDICATORS,
    STRATEGIES,
    resolution_indicator,
    select_resolution,
    select_resolutions,
)

REFERENCE_SET = (7, 14, 28, 112)
# The reference's inclusive intervals on {7, 14, 28, 112}: (resolution, lowest r, highest r).
REFERENCE_TABLE = {
    "ceil": [(7, 1, 7), (14, 8, 14), (28, 15, 28), (112, 29, 10**9)],
    "near": [(7, 1, 10), (14, 11, 21), (28, 22, 70), (112, 71, 10**9)],
    "floor": [(7, 1, 13), (14, 14, 27), (28, 28, 111), (112, 112, 10**9)],
}
VALUES = np.arange(1, 1501)


def expected(strategy: str, value: int) -> int:
    (resolution,) = [res for res, low, high in REFERENCE_TABLE[strategy] if low <= value <= high]
    return resolution


def sizes_with_indicator(indicator: str, values: np.ndarray) -> list[np.ndarray]:
    """Several (W, H) layouts whose indicator equals ``values``."""
    ones = np.ones_like(values)
    if indicator == "max":
        return [np.stack([values, ones], 1), np.stack([ones, values], 1), np.stack([values, values], 1)]
    if indicator == "min":
        return [np.stack([values, values + 5], 1), np.stack([values + 900, values], 1)]
    return [np.stack([values, values], 1), np.stack([values, values + 1], 1), np.stack([values + 1, values - 1], 1)]


def test_constants():
    assert INDICATORS == ("max", "min", "avg")
    assert STRATEGIES == ("ceil", "near", "floor")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("indicator", INDICATORS)
def test_reference_table_exhaustive(indicator, strategy):
    want = np.array([expected(strategy, int(v)) for v in VALUES])
    for sizes in sizes_with_indicator(indicator, VALUES):
        valid = (sizes >= 1).all(axis=1)
        got = select_resolutions(sizes[valid], REFERENCE_SET, indicator, strategy)
        np.testing.assert_array_equal(got, want[valid])
    # The scalar API agrees on every value (square images: every indicator equals the side).
    for v in VALUES:
        assert select_resolution(int(v), int(v), REFERENCE_SET, indicator, strategy) == expected(strategy, int(v))


def test_table_boundaries_spelled_out():
    # A few boundaries written literally, independent of the table helper.
    cases = {"ceil": {7: 7, 8: 14, 14: 14, 15: 28, 28: 28, 29: 112},
             "near": {10: 7, 11: 14, 21: 14, 22: 28, 70: 28, 71: 112},
             "floor": {13: 7, 14: 14, 27: 14, 28: 28, 111: 28, 112: 112}}
    for strategy, table in cases.items():
        for value, resolution in table.items():
            assert select_resolution(value, 1, REFERENCE_SET, "max", strategy) == resolution


def test_indicator_values():
    assert resolution_indicator(30, 20, "max") == 30
    assert resolution_indicator(30, 20, "min") == 20
    assert resolution_indicator(30, 21, "avg") == 25  # floor(51 / 2)
    assert resolution_indicator(1, 2, "avg") == 1
    assert resolution_indicator(np.int64(9), 4) == 9


def test_nothing_is_dropped():
    huge = [(1001, 1001), (5000, 40), (100_000, 100_000), (1, 1)]
    for strategy in STRATEGIES:
        got = select_resolutions(huge, REFERENCE_SET, "max", strategy)
        assert got.shape == (4,)
        np.testing.assert_array_equal(got, [112, 112, 112, 7])


def test_mixed_sizes_and_indicators():
    sizes = np.array([(20, 9), (9, 20), (40, 10), (112, 112)])
    np.testing.assert_array_equal(select_resolutions(sizes, REFERENCE_SET, "max", "ceil"), [28, 28, 112, 112])
    np.testing.assert_array_equal(select_resolutions(sizes, REFERENCE_SET, "min", "ceil"), [14, 14, 14, 112])
    np.testing.assert_array_equal(select_resolutions(sizes, REFERENCE_SET, "avg", "ceil"), [14, 14, 28, 112])


def brute_force(value: int, resolutions: list[int], strategy: str) -> int:
    if strategy == "ceil":
        above = [r for r in resolutions if r >= value]
        return min(above) if above else max(resolutions)
    if strategy == "floor":
        below = [r for r in resolutions if r <= value]
        return max(below) if below else min(resolutions)
    return min(resolutions, key=lambda r: (abs(r - value), r))  # nearest, ties to the smaller


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_any_resolution_set_matches_brute_force(strategy):
    rng = np.random.default_rng(0)
    values = np.arange(1, 300)
    sizes = np.stack([values, np.ones_like(values)], 1)
    for _ in range(20):
        resolutions = [int(r) for r in rng.choice(np.arange(2, 260), size=rng.integers(1, 6), replace=False)]
        got = select_resolutions(sizes, resolutions, "max", strategy)
        want = [brute_force(int(v), resolutions, strategy) for v in values]
        np.testing.assert_array_equal(got, want)


def test_order_and_duplicates_of_resolutions_do_not_matter():
    sizes = [(v, v) for v in range(1, 200)]
    base = select_resolutions(sizes, REFERENCE_SET, "max", "near")
    np.testing.assert_array_equal(select_resolutions(sizes, (112, 7, 28, 14, 14), "max", "near"), base)


def test_single_resolution_takes_everything():
    got = select_resolutions([(1, 1), (56, 56), (999, 3)], [56], "avg", "floor")
    np.testing.assert_array_equal(got, [56, 56, 56])


def test_return_types():
    assert type(select_resolution(20, 20, REFERENCE_SET)) is int
    got = select_resolutions([(20, 20)], REFERENCE_SET)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    assert select_resolutions([], REFERENCE_SET).shape == (0,)
    assert select_resolutions(np.zeros((0, 2), dtype=np.int32), REFERENCE_SET).shape == (0,)


@pytest.mark.parametrize("width,height", [(0, 10), (10, 0), (-3, 5), (2.5, 4), (True, 4)])
def test_bad_scalar_sizes(width, height):
    with pytest.raises(InputImageError):
        select_resolution(width, height, REFERENCE_SET)
    with pytest.raises(InputImageError):
        resolution_indicator(width, height)


@pytest.mark.parametrize(
    "sizes",
    [[(10, 10), (0, 4)], np.array([[3, 4, 5]]), np.array([[2.0, 3.0]]), [(1, 2), (3,)], np.array([[True, True]])],
)
def test_bad_size_arrays(sizes):
    with pytest.raises(InputImageError):
        select_resolutions(sizes, REFERENCE_SET)


def test_bad_size_error_names_the_sample():
    with pytest.raises(InputImageError, match=r"#1 is \(0, 4\)"):
        select_resolutions([(10, 10), (0, 4)], REFERENCE_SET)


def test_unknown_names_list_accepted():
    with pytest.raises(ConfigError, match="max, min, avg"):
        select_resolution(10, 10, REFERENCE_SET, indicator="mean")
    with pytest.raises(ConfigError, match="ceil, near, floor"):
        select_resolution(10, 10, REFERENCE_SET, strategy="round")
    with pytest.raises(ConfigError, match="max, min, avg"):
        resolution_indicator(10, 10, "area")


@pytest.mark.parametrize("resolutions", [[], [7, 0, 112], [-7], [7.5, 14], [True]])
def test_bad_resolutions(resolutions):
    with pytest.raises(ConfigError):
        select_resolution(10, 10, resolutions)
    with pytest.raises(ConfigError):
        select_resolutions([(10, 10)], resolutions)
