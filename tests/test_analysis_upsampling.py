"""Tests of btnet_adapters.analysis.upsampling: the bilinear error estimate against hand-computed
values on polynomial images, the measured down-then-up error, and real faces (ORL, CelebA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from btnet_adapters.analysis import upsampling as U
from btnet_adapters.data.errors import CorruptImageError, DatasetError, MissingDataError
from btnet_adapters.errors import ConfigError, InputImageError, ResolutionError
from btnet_adapters.resize import CV2_BILINEAR, ResizeSpec

ORL = Path(U.__file__).resolve().parents[1] / "assets" / "orl"
S = 112
FLOAT = ResizeSpec("torch", "bilinear", antialias=False)   # exact bilinear, no rounding
Y, X = np.mgrid[0:S, 0:S].astype(np.float64)


def _remainder_weights(n_lo: int) -> np.ndarray:
    """|(i - c_k)(i - c_{k+1})| at the interior pixels, computed by hand from the centres."""
    h = S / n_lo
    nodes = [(k + 0.5) * h - 0.5 for k in range(n_lo)]
    out = []
    for i in range(S):
        if nodes[0] <= i <= nodes[-1]:
            k = min(max(j for j in range(n_lo) if nodes[j] <= i), n_lo - 2)
            out.append((i - nodes[k]) * (nodes[k + 1] - i))
    return np.array(out)


# ----------------------------------------------------------------------------- differences
def test_second_differences_of_x2y2_are_exact() -> None:
    dxx, dyy, dxxyy = U.second_differences(X ** 2 * Y ** 2)
    assert np.array_equal(dxxyy, np.full((S, S), 4.0))       # the fourth-order mixed difference
    assert np.array_equal(dxx, 2 * Y ** 2)                   # Δ²x (x²y²) = 2y², padded at the sides
    assert np.array_equal(dyy, 2 * X ** 2)


def test_second_differences_need_three_pixels() -> None:
    with pytest.raises(InputImageError, match="3×3"):
        U.second_differences(np.zeros((2, 5)))


# ----------------------------------------------------------------------------- the estimate
def test_bound_of_x2y2_matches_hand_computation() -> None:
    scale = 1.0 / (S - 1) ** 4                                # keeps the image in [0, 1]
    est = U.bilinear_bound(X ** 2 * Y ** 2 * scale, (16, 16))
    h = 7.0                                                   # 112 / 16
    mixed = h ** 4 / 64 * 4 * scale                           # h⁴/64 · max|Δ²xΔ²y f|
    second = 2 * h ** 2 / 8 * (2 * (S - 1) ** 2) * scale      # h²/8 · (max|Δ²x f| + max|Δ²y f|)
    assert est.spacing == (h, h)
    assert est.mixed_term == pytest.approx([mixed], rel=1e-12)
    assert est.bound == pytest.approx([second + mixed], rel=1e-12)


def test_sample_grid_geometry() -> None:
    est = U.bilinear_bound(np.zeros((S, S)), (16, 16))
    assert (est.rows, est.cols) == (slice(3, 109), slice(3, 109))    # centres 3, 10, …, 108
    assert est.pointwise.shape == (1, 106, 106)
    ax = U._axis(S, 16)
    assert np.allclose(ax.omega, _remainder_weights(16))
    assert ax.omega[1] == 6.0                                  # pixel 4: (4 - 3)·(10 - 4)


def test_bound_is_tight_for_a_parabola() -> None:
    # f = x² (scaled): linear interpolation error is exactly |ωx|, and so is the bound |ωx|/2·2
    scale = 1.0 / (S - 1) ** 2
    f = X ** 2 * scale
    est = U.bilinear_bound(f, (16, 16))
    err = np.abs(U.down_up(f, (16, 16), FLOAT)[0] - f)[est.rows, est.cols]
    expected = np.broadcast_to(_remainder_weights(16) * scale, err.shape)
    assert np.allclose(est.pointwise[0], expected, atol=1e-12)
    assert np.allclose(err, expected, atol=1e-6)              # float32 resizing


def test_measured_error_of_x2y2_is_the_remainder_and_within_the_bound() -> None:
    # With h = 7 the down-sampled grid hits integer pixels, so samples are exact and the
    # up-sampling error is the tensor-product remainder x²|ωy| + y²|ωx| + |ωx·ωy|.
    scale = 1.0 / (S - 1) ** 4
    f = X ** 2 * Y ** 2 * scale
    est = U.bilinear_bound(f, (16, 16))
    err = np.abs(U.down_up(f, (16, 16), FLOAT)[0] - f)[est.rows, est.cols]
    w = _remainder_weights(16)
    xs, ys = X[est.rows, est.cols], Y[est.rows, est.cols]
    remainder = (xs ** 2 * w[:, None] + ys ** 2 * w[None, :] + w[:, None] * w[None, :]) * scale
    assert np.allclose(err, remainder, atol=1e-6)
    assert (err <= est.pointwise[0] + U.rounding_tolerance(FLOAT)).all()
    assert est.pointwise[0].max() <= est.bound[0]


@pytest.mark.parametrize("r", [5, 7, 10, 28, 56])
def test_bilinear_image_has_zero_bound_and_zero_interior_error(r: int) -> None:
    f = 0.1 + 0.003 * X + 0.002 * Y + 0.00002 * X * Y
    est = U.bilinear_bound(f, (r, r))
    err = np.abs(U.down_up(f, (r, r), FLOAT)[0] - f)
    assert est.bound.max() < 1e-9 and est.pointwise.max() < 1e-9      # round-off × h⁴ only
    assert err[est.rows, est.cols].max() < 2e-6               # exact up to float32
    assert err.max() > 1e-3                                    # borders are clamped, not interpolated


def test_uint8_pipeline_error_stays_within_rounding() -> None:
    ramp = (2 * X).astype(np.uint8)                            # a linear ramp on integer levels
    report = U.analyse_images([ramp], resolutions=(5, 7, 10, 14), resize=CV2_BILINEAR)
    for row in report.rows:
        assert row.bound < 1e-12 and row.pointwise_bound < 1e-12
        assert row.max_abs <= U.rounding_tolerance(CV2_BILINEAR) + 1e-12
        assert row.within_bound == 1.0
    assert report.row(5).max_abs > 0.5 / 255                   # 5 px samples fall between levels


def test_bilinear_bound_rejects_bad_grids() -> None:
    with pytest.raises(ResolutionError, match=r"\[2, image side\]"):
        U.bilinear_bound(np.zeros((S, S)), (1, 16))
    with pytest.raises(ResolutionError):
        U.bilinear_bound(np.zeros((S, S)), (16, 113))


# ----------------------------------------------------------------------------- inputs
def test_resolutions_are_validated() -> None:
    assert U.check_resolutions([28, 7, 14, 7]) == (7, 14, 28)
    for bad in ([113], [1], [0]):
        with pytest.raises(ResolutionError, match=r"outside \[2, 112\]"):
            U.check_resolutions(bad)
    with pytest.raises(ResolutionError, match="integers"):
        U.check_resolutions([7.5])
    with pytest.raises(ResolutionError, match="no resolutions"):
        U.check_resolutions([])


def test_low_size_keeps_aspect_and_two_pixels() -> None:
    assert U.low_size((112, 112), 7) == (7, 7)
    assert U.low_size((112, 92), 7) == (7, 6)                  # ORL faces are 92 wide
    assert U.low_size((112, 20), 4) == (4, 2)


def test_luminance_and_reference_size() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255
    assert np.allclose(U.to_luminance(rgb), 0.587)
    assert U.to_luminance(np.full((3, 3), 51, np.uint8)).max() == pytest.approx(0.2)
    with pytest.raises(InputImageError, match=r"\[0, 1\]"):
        U.to_luminance(np.full((3, 3), 2.0))
    with pytest.raises(InputImageError):
        U.to_luminance(np.zeros((3, 3, 3), np.float32))
    small = U.to_reference(np.random.default_rng(0).random((56, 46)))
    assert small.shape == (112, 92) and 0.0 <= small.min() and small.max() <= 1.0
    report = U.analyse_images([np.full((56, 46), 128, np.uint8), np.zeros((112, 112), np.uint8)],
                              resolutions=(14,))
    assert report.rescaled == 1 and report.images == 2


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="not found"):
        U.list_images(tmp_path / "missing")
    (tmp_path / "empty" / "id1").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no images"):
        U.analyse_folder(tmp_path / "empty", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CorruptImageError, match="a.jpg"):
        U.analyse_folder(bad, progress=False)
    with pytest.raises(ConfigError, match="limit"):
        U.list_images(ORL, limit=0)
    with pytest.raises(ResolutionError):
        U.analyse_folder(ORL, resolutions=(7, 200), progress=False)
    with pytest.raises(DatasetError, match="no images"):
        U.analyse_images([])


def test_list_images_limit_spreads_over_identities() -> None:
    paths = U.list_images(ORL, limit=40)
    assert len(paths) == 40
    assert len({p.parent.name for p in paths}) >= 35          # not just the first 4 people


# ----------------------------------------------------------------------------- real faces
def _assert_falls_with_resolution(report: U.UpsamplingReport) -> None:
    for field in ("bound", "mixed_term", "pointwise_bound", "mae", "rmse", "mae_full"):
        values = [getattr(r, field) for r in report.rows]
        assert all(a > b for a, b in zip(values, values[1:])), (field, values)
    top = report.rows[-1]
    assert top.resolution == S and top.mae == 0.0 and top.pointwise_bound == 0.0


def test_orl_error_grows_as_resolution_falls() -> None:
    report = U.analyse_folder(ORL, resolutions=(4, 7, 14, 28, 56, 112), limit=80, progress=False)
    assert report.images == 80 and report.rescaled == 0        # 92×112: longer side is 112
    _assert_falls_with_resolution(report)
    r7 = report.row(7)
    assert 0.03 < r7.mae < 0.2 and r7.rmse > r7.mae
    assert r7.mixed_term > 0.9 * r7.bound                      # h⁴ term dominates tiny faces
    assert report.row(112).mixed_term < 0.2 * report.row(112).bound
    with pytest.raises(ResolutionError, match="analysed"):
        report.row(8)


def test_celeba_error_grows_as_resolution_falls(celeba_dir: Path) -> None:
    report = U.analyse_folder(celeba_dir / "images", resolutions=(7, 14, 28, 112), limit=120,
                              progress=False)
    assert report.images == 120
    _assert_falls_with_resolution(report)
    assert 0.04 < report.row(7).mae < 0.2
    assert report.row(28).within_bound > 0.99
