"""Degradation specs, seeded multi-resolution sampling, the datasets and the corrupt policy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from btnet_adapters.data import (BRANCH_DEGRADATION, TRUNK_DEGRADATION, CorruptImageError,
                                 CorruptPolicy, DatasetError, DegradationSpec, FaceDataset,
                                 ImageFolderSource, PairedFaceDataset, ResolutionSampler,
                                 find_corrupt, sample_rng, write_synthetic_folder)
from btnet_adapters.errors import ConfigError, ResolutionError
from btnet_adapters.resize import CV2_BILINEAR, PIL_BICUBIC, ResizeSpec, resize_array, resize_tensor


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_folder(tmp_path_factory.mktemp("faces"), num_identities=3,
                                  per_identity=4, size=32)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo the model normalisation."""
    return (x * 0.5 + 0.5) * 255


def test_degradation_spec_roundtrip_and_apply() -> None:
    spec = DegradationSpec(ResizeSpec("cv2", "area", True), upsample=True,
                           upsample_resize=PIL_BICUBIC)
    assert DegradationSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert DegradationSpec.from_dict(BRANCH_DEGRADATION.to_dict()) == BRANCH_DEGRADATION
    with pytest.raises(ConfigError):
        DegradationSpec.from_dict({**spec.to_dict(), "extra": 1})
    x = torch.randint(0, 256, (3, 32, 32)).float()
    assert spec.apply(x, 32, 32) is x
    assert BRANCH_DEGRADATION.apply(x, 8, 32).shape == (3, 8, 8)
    expected = resize_tensor(x, 8, BRANCH_DEGRADATION.resize)
    assert torch.equal(BRANCH_DEGRADATION.apply(x, 8, 32), expected)
    up = spec.apply(x, 8, 32)
    low = resize_array(x.permute(1, 2, 0).to(torch.uint8).numpy(), 8, spec.resize)
    expected = resize_array(low, 32, PIL_BICUBIC)
    assert torch.equal(up, torch.from_numpy(expected).permute(2, 0, 1).float())
    with pytest.raises(ResolutionError):
        spec.apply(x, 64, 32)


def test_degradation_libraries_differ() -> None:
    """The recorded spec matters: antialiasing changes the low-resolution pixels."""
    x = torch.randint(0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(0)).float()
    aa = DegradationSpec(ResizeSpec("torch", "bilinear", True), upsample=False).apply(x, 8, 32)
    no_aa = BRANCH_DEGRADATION.apply(x, 8, 32)
    cv2 = DegradationSpec(CV2_BILINEAR, upsample=False).apply(x, 8, 32)
    assert float(no_aa.std()) > 2 * float(aa.std())   # 2×2 taps vs an 8×8 low-pass
    assert float((cv2 - no_aa).abs().max()) <= 1.0    # same sampling grid, uint8 rounding


def test_resolution_presets() -> None:
    v1, v2, v3 = (ResolutionSampler.preset(n) for n in ("v1", "v2", "v3"))
    assert v1.sizes == v2.sizes == (112, 56, 28, 14, 7) and v1.probs is None
    assert v2.probs == (0.3, 0.25, 0.2, 0.15, 0.1)
    assert v3.sizes == tuple(range(4, 113))
    assert ResolutionSampler.from_dict(v2.to_dict()) == v2
    rng = np.random.default_rng(0)
    draws = np.array([v2.sample(rng) for _ in range(20000)])
    freq = [(draws == s).mean() for s in v2.sizes]
    assert np.allclose(freq, v2.probs, atol=0.015)
    d3 = np.array([v3.sample(rng) for _ in range(5000)])
    assert d3.min() == 4 and d3.max() == 112
    with pytest.raises(ConfigError):
        ResolutionSampler.preset("v4")
    with pytest.raises(ConfigError):
        ResolutionSampler((112, 7), (0.5, 0.6))


def test_sample_rng_depends_on_seed_epoch_index_only() -> None:
    a = sample_rng(3, 1, 10).random(4)
    assert np.array_equal(a, sample_rng(3, 1, 10).random(4))
    for other in ((4, 1, 10), (3, 2, 10), (3, 1, 11)):
        assert not np.array_equal(a, sample_rng(*other).random(4))
    with pytest.raises(ConfigError):
        sample_rng(-1, 0, 0)


def test_normalisation_and_flip(folder: Path) -> None:
    source = ImageFolderSource(folder)
    plain = FaceDataset(source, size=32, flip=False)
    x, label = plain[5]
    raw = torch.from_numpy(source.load(5)).permute(2, 0, 1).float()
    assert label == 1 and x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert torch.allclose(x, (raw / 255 - 0.5) / 0.5)
    imagenet = FaceDataset(source, size=32, flip=False, mean=(0.485, 0.456, 0.406),
                           std=(0.229, 0.224, 0.225))[5][0]
    assert torch.allclose(imagenet[1], (raw[1] / 255 - 0.456) / 0.224)
    with pytest.raises(ConfigError):
        FaceDataset(source, std=(0.5, 0.0, 0.5))
    flipping = FaceDataset(source, size=32, flip=True)
    flips = [not torch.equal(flipping[i][0], plain[i][0]) for i in range(len(source))]
    assert any(flips) and not all(flips)
    for i, flipped in enumerate(flips):
        if flipped:
            assert torch.equal(flipping[i][0], plain[i][0].flip(-1))


def test_multires_dataset_reproducible_across_workers_and_epochs(folder: Path) -> None:
    source = ImageFolderSource(folder)
    dataset = FaceDataset(source, size=32, resolutions=ResolutionSampler((32, 16, 8, 4)), seed=7)
    dataset.set_epoch(3)
    direct = torch.stack([dataset[i][0] for i in range(len(dataset))])
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    assert torch.equal(torch.cat([b[0] for b in loader]), direct)
    assert torch.equal(dataset[(3, 5)][0], direct[5])
    dataset.set_epoch(4)
    again = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert not torch.equal(again, direct)
    # low-resolution samples are smoother: some of an epoch's images lost detail
    detail = (direct[..., 1:] - direct[..., :-1]).abs().mean(dim=(1, 2, 3))
    sharp = (FaceDataset(source, size=32, flip=False)[0][0].diff(dim=-1)).abs().mean()
    assert detail.min() < 0.5 * sharp


def test_multires_validation(folder: Path) -> None:
    source = ImageFolderSource(folder)
    with pytest.raises(ResolutionError):
        FaceDataset(source, size=32, resolutions=ResolutionSampler.preset("v1"))
    with pytest.raises(ConfigError, match="cannot be batched"):
        FaceDataset(source, size=32, resolutions=ResolutionSampler((16, 8)),
                    degradation=BRANCH_DEGRADATION)
    fixed = FaceDataset(source, size=32, resolutions=ResolutionSampler.fixed(8),
                        degradation=BRANCH_DEGRADATION)
    assert fixed[0][0].shape == (3, 8, 8)
    config = json.loads(json.dumps(fixed.config()))
    assert config["resolutions"]["sizes"] == [8] and config["source"]["num_images"] == 12


def test_paired_same_flip_and_degradation(folder: Path) -> None:
    source = ImageFolderSource(folder)
    paired = PairedFaceDataset(source, 8, size=32, seed=1)
    plain = FaceDataset(source, size=32, flip=False)
    seen_flip = False
    for i in range(len(paired)):
        teacher, student, label = paired[i]
        assert student.shape == (3, 8, 8) and label == int(source.labels[i])
        flipped = not torch.equal(teacher, plain[i][0])
        seen_flip |= flipped
        expected = BRANCH_DEGRADATION.apply(_pixels(plain[i][0]), 8, 32)
        expected = expected.flip(-1) if flipped else expected
        assert torch.allclose(_pixels(student), expected, atol=1e-3)
    assert seen_flip
    with pytest.raises(ResolutionError):
        PairedFaceDataset(source, 64, size=32)
    up = PairedFaceDataset(source, 8, size=32, degradation=TRUNK_DEGRADATION)
    assert up[0][1].shape == (3, 32, 32)


def test_images_of_other_sizes_are_resized(tmp_path: Path) -> None:
    orl = Path(__file__).resolve().parents[1] / "btnet_adapters" / "assets" / "orl"
    x, _ = FaceDataset(ImageFolderSource(orl), size=112)[0]
    assert x.shape == (3, 112, 112) and torch.equal(x[0], x[1])


def _broken_folder(tmp_path: Path, broken: int) -> Path:
    root = write_synthetic_folder(tmp_path / "f", num_identities=2, per_identity=5, size=16)
    for path in sorted(root.glob("*/*.png"))[:broken]:
        path.write_bytes(b"\x89PNG broken")
    return root


def test_corrupt_images_replaced_and_reported(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    source = ImageFolderSource(_broken_folder(tmp_path, 2))
    log = tmp_path / "corrupt.jsonl"
    dataset = FaceDataset(source, size=16, flip=False,
                          corrupt=CorruptPolicy(max_fraction=0.3, log_path=str(log)))
    with caplog.at_level(logging.WARNING):
        x, label = dataset[0]
    assert torch.equal(x, dataset[2][0]) and label == 0          # next readable sample
    assert "id0000/0000.png" in caplog.text and "id0000/0001.png" in caplog.text
    assert sorted(dataset.corrupt_samples) == [0, 1]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["index"] for entry in lines] == [0, 1]
    assert torch.equal(dataset[1][0], dataset[2][0])            # known failures are not retried
    assert len(log.read_text().splitlines()) == 2
    assert [i for i, _ in find_corrupt(source, progress=False)] == [0, 1]


def test_corrupt_policy_limits(tmp_path: Path) -> None:
    source = ImageFolderSource(_broken_folder(tmp_path, 3))
    with pytest.raises(DatasetError, match="more than max_fraction"):
        FaceDataset(source, size=16, corrupt=CorruptPolicy(max_fraction=0.2))[0]
    with pytest.raises(CorruptImageError, match="0000.png"):
        FaceDataset(source, size=16, corrupt=CorruptPolicy(action="raise"))[0]
    with pytest.raises(DatasetError, match="no readable image"):
        FaceDataset(source, size=16, corrupt=CorruptPolicy(max_fraction=1.0, max_tries=1))[0]
    with pytest.raises(ConfigError):
        CorruptPolicy(action="ignore")
    assert CorruptPolicy.from_dict(CorruptPolicy().to_dict()) == CorruptPolicy()
