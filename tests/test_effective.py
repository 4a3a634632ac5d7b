"""Tests of the effective-resolution estimator, its calibration and routing by it."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from btnet_adapters import BTNet, routing
from btnet_adapters.cli import build_parser, orl_faces
from btnet_adapters.effective import (
    DEFAULT_SIDES,
    EffectiveCalibration,
    band_features,
    calibrate,
    calibrate_orl,
    confusion,
    default_calibration,
    degrade,
    effective_side,
    effective_sides,
    route_effective,
)
from btnet_adapters.errors import ConfigError, InputImageError
from btnet_adapters.resize import CV2_BILINEAR, PIL_BILINEAR, ResizeSpec, resize_array, resize_tensor

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread is fastest here

REFERENCE_SET = (7, 14, 28, 112)


def power_law_pattern(seed: int = 0, slope: float = 2.5, size: int = 112) -> np.ndarray:
    """A sharp grey texture with a natural-image (1/f^slope) power spectrum, uint8."""
    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size) * size
    radius = np.hypot(freq[:, None], freq[None, :])
    radius[0, 0] = 1.0
    spectrum = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) / radius ** (slope / 2)
    x = np.real(np.fft.ifft2(spectrum))
    return np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def orl_112() -> list[np.ndarray]:
    """The 10th ORL image of each of the 40 people, resized to 112×112."""
    return [resize_array(np.asarray(face), (112, 112), PIL_BILINEAR) for face in orl_faces(10)[9::10]]


@pytest.fixture(scope="module")
def tiny_btnet() -> BTNet:
    torch.manual_seed(0)
    return BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(7, 14, 28), embed_dim=16).eval()


# ----------------------------------------------------------------------------- estimator
@pytest.mark.parametrize("spec", [PIL_BILINEAR, CV2_BILINEAR], ids=str)
def test_degraded_pattern_gives_its_side(spec):
    pattern = power_law_pattern()
    got = [effective_side(degrade(pattern, r, 160, spec)) for r in DEFAULT_SIDES]
    assert got == list(DEFAULT_SIDES)


def test_blur_lowers_the_estimate_monotonically():
    pattern = power_law_pattern(seed=3)
    sides = [effective_side(pattern)] + [effective_side(cv2.GaussianBlur(pattern, (0, 0), s)) for s in (1, 2, 4, 8)]
    assert sides[0] == 112 and sides[-1] == 7
    assert all(a >= b for a, b in zip(sides, sides[1:])), sides
    assert len(set(sides)) >= 4, sides


def test_features_fall_for_degraded_copies():
    pattern = power_law_pattern(seed=1)
    sharp, low = band_features([pattern, degrade(pattern, 14, 112)])
    assert sharp.shape == (len(DEFAULT_SIDES) - 1,)
    assert low[1:].max() < sharp[1:].min() - 1.0  # rings at 14, 28, 56 px: an order of magnitude less


def test_input_forms_agree():
    pattern = power_law_pattern(seed=2)
    rgb = np.repeat(pattern[..., None], 3, axis=2)
    as_tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    from PIL import Image

    forms = [pattern, rgb, as_tensor, as_tensor.float() / 255, Image.fromarray(pattern)]
    features = band_features(forms)
    np.testing.assert_allclose(features, np.broadcast_to(features[0], features.shape), atol=1e-3)
    assert list(effective_sides(as_tensor[None].repeat(2, 1, 1, 1))) == [112, 112]  # N×C×H×W batch


def test_blank_image_has_the_smallest_side():
    assert effective_side(np.full((112, 112), 128, np.uint8)) == DEFAULT_SIDES[0]


# ----------------------------------------------------------------------------- calibration
def test_default_confusion_on_orl_is_diagonal(orl_112):
    """Held-out resampler (torch antialiased bilinear) and enlargement (192 px); measured 0.925."""
    spec = ResizeSpec("torch", "bilinear", antialias=True)
    truth = [r for r in DEFAULT_SIDES for _ in orl_112]
    images = [degrade(face, r, 192, spec) for r in DEFAULT_SIDES for face in orl_112]
    table = confusion(truth, effective_sides(images), DEFAULT_SIDES)
    assert table.sum() == len(images)
    assert np.trace(table) / table.sum() >= 0.85
    assert (table.diagonal() >= 0.75 * len(orl_112)).all(), table
    assert np.abs(np.subtract.outer(np.arange(5), np.arange(5)))[table > 0].max() <= 1, table  # off by one side at most


def test_calibrate_on_orl_subset(orl_112):
    cal = calibrate(orl_112, progress=False, source="ORL subset")
    default = default_calibration()
    assert cal.sides == default.sides and cal.n_images == len(orl_112)
    assert cal.jpeg_qualities == default.jpeg_qualities
    assert cal.accuracy is not None and cal.accuracy >= 0.78  # measured 0.85 (4 in 5 copies JPEG)
    np.testing.assert_allclose(cal.thresholds, default.thresholds, atol=0.25)
    table = np.array(cal.confusion)
    assert table.sum() == len(orl_112) * len(DEFAULT_SIDES) * len(cal.degradations)
    assert np.trace(table) / table.sum() == pytest.approx(cal.accuracy)
    lossless = calibrate(orl_112, jpeg_qualities=(None,), progress=False)
    assert lossless.accuracy >= 0.93  # measured 0.98


def test_calibrate_custom_sides_and_spec(orl_112):
    cal = calibrate(orl_112[:12], resolutions=(8, 16, 32, 64), resize_spec=CV2_BILINEAR,
                    enlarge=(96,), progress=False)
    assert cal.sides == (8, 16, 32, 64) and cal.analysis_size == 64
    assert cal.degradations == (CV2_BILINEAR.to_dict(),) and cal.enlarge == (96,)
    assert effective_side(degrade(orl_112[20], 16, 96, CV2_BILINEAR), cal) == 16


def test_jpeg_copies(orl_112):
    copy = degrade(orl_112[0], 14, 112, jpeg_quality=50)
    assert copy.shape == (112, 112) and copy.dtype == np.uint8
    assert not np.array_equal(copy, degrade(orl_112[0], 14, 112))
    cal = calibrate(orl_112[:3], enlarge=(112, 160), jpeg_qualities=(None, 80), progress=False)
    assert cal.jpeg_qualities == (None, 80)
    assert EffectiveCalibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    with pytest.raises(ConfigError, match="jpeg_quality"):
        degrade(orl_112[0], 14, 112, jpeg_quality=100)
    with pytest.raises(ConfigError, match="jpeg_qualities"):
        calibrate(orl_112[:1], jpeg_qualities=())


def test_calibration_json_round_trip(tmp_path, orl_112):
    cal = calibrate(orl_112[:4], progress=False, source="four faces")
    text = json.dumps(cal.to_dict())
    assert EffectiveCalibration.from_dict(json.loads(text)) == cal
    path = cal.save(tmp_path / "sub" / "calibration.json")
    assert EffectiveCalibration.load(path) == cal
    assert not list(path.parent.glob(".*tmp*"))  # atomic write leaves no temporary file
    assert EffectiveCalibration.from_dict(default_calibration().to_dict()) == default_calibration()


@pytest.mark.slow
def test_bundled_default_is_reproduced():
    fresh, bundled = calibrate_orl(progress=False), default_calibration()
    np.testing.assert_allclose(fresh.thresholds, bundled.thresholds, atol=1e-3)
    assert fresh.accuracy == pytest.approx(bundled.accuracy, abs=1e-3)
    assert fresh.confusion == bundled.confusion


# ----------------------------------------------------------------------------- routing
def test_route_effective_takes_the_smaller_of_size_and_content(orl_112):
    face = orl_112[0]
    images = [
        face,                                   # sharp 112 -> trunk
        degrade(face, 14, 112),                 # 14 px of detail in 112 px -> branch 14
        degrade(face, 7, 224),                  # 7 px of detail in 224 px -> branch 7
        resize_array(face, 20, PIL_BILINEAR),   # sharp 20 px: its size limits it -> 28 (ceil)
        degrade(face, 28, 20),                  # 28 px squeezed into 20 px -> 28 (ceil of 20)
    ]
    assert list(route_effective(images, REFERENCE_SET)) == [112, 14, 7, 28, 28]
    assert list(route_effective(images, REFERENCE_SET, strategy="floor")) == [112, 14, 7, 14, 14]


def test_routing_entry_points():
    assert list(routing.select_resolutions_effective([(112, 112), (112, 90), (20, 20)], [14, math.inf, 56],
                                                     REFERENCE_SET)) == [14, 112, 28]
    assert routing.select_resolution_effective(112, 112, 14.9, REFERENCE_SET, "near") == 14
    with pytest.raises(ConfigError, match="needs the image content"):
        routing.select_resolutions([(112, 112)], REFERENCE_SET, indicator="effective")
    with pytest.raises(InputImageError, match="one per image"):
        routing.select_resolutions_effective([(112, 112)], [14, 28], REFERENCE_SET)
    with pytest.raises(InputImageError, match=">= 1 px"):
        routing.select_resolutions_effective([(112, 112)], [float("nan")], REFERENCE_SET)
    with pytest.raises(ConfigError, match="strategy"):
        routing.select_resolutions_effective([(112, 112)], [14], REFERENCE_SET, strategy="round")


def test_embed_effective_routes_enlarged_14px_image_to_branch_14(tiny_btnet):
    model = tiny_btnet
    sharp = np.repeat(power_law_pattern(seed=4)[..., None], 3, axis=2)
    enlarged = degrade(sharp, 14, 112)
    assert model.route(112, 112, "effective", effective_side=effective_side(enlarged)) == 14
    by_content = model.embed([enlarged], indicator="effective")
    pixels = torch.from_numpy(enlarged).permute(2, 0, 1).float()
    at_14 = resize_tensor(pixels, 14, model.resize_spec) / 255  # what embed feeds branch 14
    torch.testing.assert_close(by_content, model.embed([at_14]))
    assert not torch.allclose(by_content, model.embed([enlarged], indicator="max"), atol=1e-3)
    full = model.embed([sharp], indicator="effective")  # full detail still goes to the trunk
    torch.testing.assert_close(full, model.embed([sharp], indicator="max"))


def test_model_route_and_embed_errors(tiny_btnet):
    assert tiny_btnet.route(112, 112, "effective", effective_side=math.inf) == 112
    with pytest.raises(ConfigError, match="effective_side"):
        tiny_btnet.route(112, 112, "effective")
    with pytest.raises(ConfigError, match="only used with indicator='effective'"):
        tiny_btnet.embed([np.zeros((9, 9, 3), np.uint8)], calibration=default_calibration())
    with pytest.raises(ConfigError, match="EffectiveCalibration"):
        tiny_btnet.embed([np.zeros((9, 9, 3), np.uint8)], indicator="effective", calibration={"sides": [7]})


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("images, match", [
    ("face.jpg", "list of images"),
    (np.zeros((112, 112), np.uint8), "list of images"),
    ([], "no images"),
    ([np.zeros((112, 112), np.float32)], "uint8"),
    ([np.zeros((4, 112, 112, 3), np.uint8)], "shape"),
])
def test_bad_images(images, match):
    with pytest.raises(InputImageError, match=match):
        effective_sides(images)


@pytest.mark.parametrize("changes, match", [
    ({"sides": (14, 7, 112)}, "ascending"),
    ({"sides": (7, 14, 28)}, "analysis_size"),
    ({"thresholds": (-3.0,)}, "thresholds"),
    ({"thresholds": (-3.0, float("nan"), -4.0, -4.5)}, "finite"),
    ({"ring": (1.1, 0.95)}, "ring"),
    ({"sides": (7, 14, 28, 100, 112)}, "beyond"),
    ({"analysis_size": 112.0}, "integer"),
])
def test_bad_calibration_values(changes, match):
    args = {"sides": DEFAULT_SIDES, "thresholds": (-3.0, -3.5, -4.0, -4.5), **changes}
    with pytest.raises(ConfigError, match=match):
        EffectiveCalibration(**args)


def test_bad_calibration_files_and_calls(tmp_path, orl_112):
    with pytest.raises(ConfigError, match="unknown calibration keys"):
        EffectiveCalibration.from_dict({**default_calibration().to_dict(), "gamma": 1})
    with pytest.raises(ConfigError, match="lacks"):
        EffectiveCalibration.from_dict({"sides": [7, 112]})
    with pytest.raises(ConfigError, match="malformed"):
        EffectiveCalibration.from_dict({"sides": [7, 112], "thresholds": ["low"]})
    with pytest.raises(ConfigError, match="ring"):
        EffectiveCalibration.from_dict({"sides": [7, 112], "thresholds": [-3.0], "ring": [0.9, 1.0, 1.1]})
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        EffectiveCalibration.load(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        EffectiveCalibration.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="resize_spec"):
        calibrate(orl_112[:2], resize_spec="pil")
    with pytest.raises(ConfigError, match="analysis_size"):
        calibrate(orl_112[:2], resolutions=(7, 14, 28), analysis_size=112)
    with pytest.raises(ConfigError, match="resolution"):
        degrade(orl_112[0], 0, 112)
    with pytest.raises(ConfigError, match="not one of"):
        confusion([7], [9], DEFAULT_SIDES)


# ----------------------------------------------------------------------------- command line
def test_cli_estimate_and_calibrate(tmp_path, orl_112, capsys):
    from PIL import Image

    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(degrade(orl_112[5], 7, 112)).save(folder / "low.png")
    Image.fromarray(orl_112[5]).save(folder / "sharp.png")
    parser = build_parser()  # the `btnet` command itself
    args = parser.parse_args(["effective", "estimate", str(folder)])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("low.png\t112x112\teffective 7") and out[1].endswith("effective 112")
    target = tmp_path / "cal.json"
    args = parser.parse_args(["effective", "calibrate", str(folder), "--out", str(target), "--jpeg", "none,90"])
    assert args.func(args) == 0
    assert EffectiveCalibration.load(target).n_images == 2
    assert EffectiveCalibration.load(target).jpeg_qualities == (None, 90)
    with pytest.raises(InputImageError, match="no such image"):
        args = parser.parse_args(["effective", "estimate", str(tmp_path / "nowhere")])
        args.func(args)
