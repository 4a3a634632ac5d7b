"""Tests of the arcface_torch face backbones registered with timm (btnet_adapters.backbones)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import btnet_adapters.backbones  # noqa: F401  (registers the models with timm)
from btnet_adapters.backbones import IResNet, MobileFaceNet
from btnet_adapters.errors import ConfigError, ResolutionError

IRESNETS = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200")
FAST = ("iresnet18", "iresnet34", "iresnet50", "mobilefacenet")
IRESNET_DEPTHS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 112, 112)


def _real_mobilefacenet(weights: Path) -> MobileFaceNet:
    model = timm.create_model("mobilefacenet", num_features=128, scale=1)
    model.load_state_dict(load_file(weights), strict=True)
    return model.eval()


def _load_faces(root: Path, paths: list[str]) -> torch.Tensor:
    """112x112 RGB faces as ``(N, 3, 112, 112)``, normalised ``(x - 127.5) / 128``."""
    arrays = [np.asarray(Image.open(root / p).convert("RGB"), dtype=np.float32) for p in paths]
    return (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) - 127.5) / 128.0


@torch.no_grad()
def _raw_embeddings(model: nn.Module, faces: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Raw (unnormalised) embeddings, computed in batches."""
    return torch.cat([model(chunk) for chunk in faces.split(batch)])


def _unit(emb: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(emb, dim=1)


def ten_fold_accuracy(dist: np.ndarray, same: np.ndarray, folds: np.ndarray) -> float:
    """Mean accuracy over folds; each fold uses the threshold best on the other folds.

    A pair is predicted "same" when its squared L2 distance is below the threshold
    (grid 0..4 step 0.01, as the insightface verification protocol).
    """
    thresholds = np.arange(0.0, 4.0, 0.01)
    accuracies = []
    for fold in np.unique(folds):
        test = folds == fold
        train_correct = (dist[~test, None] < thresholds[None, :]) == same[~test, None]
        best = thresholds[int(np.argmax(train_correct.mean(axis=0)))]
        accuracies.append(float(((dist[test] < best) == same[test]).mean()))
    return float(np.mean(accuracies))


def _pair_distances(emb: torch.Tensor, index: dict[str, int], pairs: list[dict[str, str]]) -> np.ndarray:
    a = emb[[index[p["path1"]] for p in pairs]]
    b = emb[[index[p["path2"]] for p in pairs]]
    return ((a - b) ** 2).sum(dim=1).numpy()


def _read_pairs(celeba_dir: Path) -> list[dict[str, str]]:
    with open(celeba_dir / "protocols" / "verification_pairs.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# --- registration and configuration -------------------------------------------------------


def test_models_are_registered_with_face_cfg() -> None:
    for name in (*IRESNETS, "mobilefacenet"):
        assert name in timm.list_models(name)
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg["input_size"] == (3, 112, 112)
        assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
        assert cfg["interpolation"] == "bilinear"
        assert cfg["num_classes"] == 0
    assert timm.models.get_pretrained_cfg("iresnet50").first_conv == "conv1"
    model = timm.create_model("mobilefacenet")
    assert isinstance(model.get_submodule(model.pretrained_cfg["first_conv"]), nn.Conv2d)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_num_classes_must_be_zero(name: str) -> None:
    with pytest.raises(ConfigError, match="num_classes must be 0"):
        timm.create_model(name, num_classes=1000)
    model = timm.create_model(name, num_classes=0)
    assert model.num_classes == 0
    model.reset_classifier(0)
    with pytest.raises(ConfigError, match="margin"):
        model.reset_classifier(10)


@pytest.mark.parametrize("kwargs", [dict(num_features=0), dict(num_features=2.5), dict(fp16="yes")], ids=str)
@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_bad_arguments_are_config_errors(name: str, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        timm.create_model(name, **kwargs)


def test_bad_architectures_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="layers"):
        IResNet(layers=(2, 2, 2))
    with pytest.raises(ConfigError, match="blocks"):
        MobileFaceNet(blocks=(1, 4, 0, 2))
    with pytest.raises(ConfigError, match="scale"):
        MobileFaceNet(scale=0)


# --- shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAST)
def test_forward_shapes(name: str) -> None:
    model = timm.create_model(name).eval()
    x = _images()
    with torch.no_grad():
        feats = model.forward_features(x)
        emb = model.forward_head(feats)
        assert feats.shape == (2, 512, 7, 7)
        assert emb.shape == (2, 512) == (2, model.num_features)
        torch.testing.assert_close(model(x), emb)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), emb)


@pytest.mark.parametrize("name", ["iresnet100", "iresnet200"])
def test_large_iresnets_construct_and_run(name: str) -> None:
    model = timm.create_model(name).eval()
    depths = tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5))
    assert depths == IRESNET_DEPTHS[name]
    with torch.no_grad():
        assert model(_images(1)).shape == (1, 512)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_num_features_sets_embedding_size(name: str) -> None:
    model = timm.create_model(name, num_features=128).eval()
    assert model.num_features == model.head_hidden_size == 128
    with torch.no_grad():
        assert model(_images(1)).shape == (1, 128)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_head_rejects_maps_from_other_input_sizes(name: str) -> None:
    model = timm.create_model(name).eval()
    with torch.no_grad(), pytest.raises(ResolutionError, match="112x112"):
        model(torch.randn(1, 3, 128, 128))


# --- feature pyramid -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kwargs",
    [("iresnet18", {}), ("iresnet34", {}), ("mobilefacenet", {}), ("mobilefacenet", dict(scale=1))],
    ids=["iresnet18", "iresnet34", "mobilefacenet", "mobilefacenet-scale1"],
)
def test_feature_info_matches_measured_shapes(name: str, kwargs: dict) -> None:
    model = timm.create_model(name, **kwargs).eval()
    hooked: dict[str, torch.Tensor] = {}
    for info in model.feature_info:
        module = model.get_submodule(info["module"])
        module.register_forward_hook(lambda m, i, o, key=info["module"]: hooked.__setitem__(key, o))
    x = _images()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
    assert [info["reduction"] for info in model.feature_info] == [2, 4, 8, 16]
    assert len(intermediates) == len(model.feature_info) == 4
    for info, feat in zip(model.feature_info, intermediates):
        assert feat.shape == (2, info["num_chs"], 112 // info["reduction"], 112 // info["reduction"])
        assert torch.equal(hooked[info["module"]], feat)
    assert model.feature_info[-1]["module"] == ("layer4" if name.startswith("iresnet") else "layers.7")


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_forward_intermediates_indices_and_stop_early(name: str) -> None:
    model = timm.create_model(name).eval()
    x = _images(1)
    with torch.no_grad():
        _, everything = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        final, picked = model.forward_intermediates(x, indices=[0, -3], stop_early=True)
    assert [t.shape for t in last_two] == [t.shape for t in everything[2:]]
    assert len(picked) == 2 and torch.equal(picked[1], everything[1]) and torch.equal(final, everything[1])
    with pytest.raises(ConfigError, match="indices"):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ConfigError, match="norm"):
        model.forward_intermediates(x, norm=True)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_features_only_matches_full_model(name: str) -> None:
    torch.manual_seed(1)
    full = timm.create_model(name).eval()
    torch.manual_seed(1)
    pyramid = timm.create_model(name, features_only=True).eval()
    torch.manual_seed(1)
    partial = timm.create_model(name, features_only=True, out_indices=(1,)).eval()
    x = _images()
    with torch.no_grad():
        expected = full.forward_intermediates(x, intermediates_only=True)
        got = pyramid(x)
        got_partial = partial(x)
    assert pyramid.feature_info.channels() == [info["num_chs"] for info in full.feature_info]
    assert pyramid.feature_info.reduction() == [2, 4, 8, 16]
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, expected))
    assert len(got_partial) == 1 and torch.equal(got_partial[0], expected[1])
    head_keys = ("fc.", "features.", "conv_sep.", "layer3.", "layer4.", "layers.4.")
    assert not any(part in k for k in partial.state_dict() for part in head_keys)


def test_pruned_head_refuses_to_embed() -> None:
    model = timm.create_model("iresnet18")
    with pytest.raises(ConfigError, match="prune_head"):
        model.prune_intermediate_layers((0, 1), prune_head=False)
    assert model.prune_intermediate_layers(4) == [0, 1, 2, 3]
    with torch.no_grad():
        feats = model.forward_features(_images(1))
    with pytest.raises(ConfigError, match="removed by prune_intermediate_layers"):
        model.forward_head(feats)


# --- parameter names, counts and initialisation ---------------------------------------------


def _expected_iresnet_keys(depths: tuple[int, ...]) -> set[str]:
    """arcface_torch IResNet state_dict names, derived from its module layout."""
    bn = lambda prefix: {f"{prefix}.{k}" for k in BN_KEYS}  # noqa: E731
    keys = {"conv1.weight", "prelu.weight", "fc.weight", "fc.bias"} | bn("bn1") | bn("bn2") | bn("features")
    for stage, depth in enumerate(depths, start=1):
        for block in range(depth):
            p = f"layer{stage}.{block}"
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight", f"{p}.prelu.weight"}
            keys |= bn(f"{p}.bn1") | bn(f"{p}.bn2") | bn(f"{p}.bn3")
            if block == 0:
                keys |= {f"{p}.downsample.0.weight"} | bn(f"{p}.downsample.1")
    return keys


@pytest.mark.parametrize("name", ["iresnet18", "iresnet50"])
def test_iresnet_state_dict_names_are_arcface_torch(name: str) -> None:
    model = timm.create_model(name)
    state = model.state_dict()
    assert set(state) == _expected_iresnet_keys(IRESNET_DEPTHS[name])
    for key in ("layer1.0.bn1.running_mean", "fc.weight", "features.weight", "layer4.1.bn3.bias"):
        assert key in state
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert state["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert all(m.eps == 1e-05 for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_iresnet50_parameter_count() -> None:
    params = sum(p.numel() for p in timm.create_model("iresnet50").parameters())
    assert abs(params - 43.6e6) / 43.6e6 < 0.01, params


def test_iresnet_initialisation_is_arcface_torch() -> None:
    model = timm.create_model("iresnet18")
    assert torch.equal(model.features.weight, torch.ones(512)) and not model.features.weight.requires_grad
    assert 0.095 < float(model.layer3[0].conv1.weight.detach().std()) < 0.105
    assert torch.equal(model.layer1[0].bn2.weight, torch.ones(64))
    zeroed = timm.create_model("iresnet18", zero_init_residual=True)
    assert all(not m.bn2.weight.any() for m in zeroed.modules() if hasattr(m, "bn3"))


def test_mobilefacenet_default_layout_is_arcface_torch_mbf() -> None:
    state = timm.create_model("mobilefacenet").state_dict()
    assert state["layers.0.layers.0.weight"].shape == (128, 3, 3, 3)
    assert state["layers.1.layers.0.weight"].shape == (128, 2, 3, 3)  # depthwise with groups=64
    assert state["layers.2.layers.0.layers.0.weight"].shape == (128, 128, 1, 1)
    assert state["layers.7.layers.1.layers.1.layers.0.weight"].shape == (256, 1, 3, 3)
    assert state["conv_sep.layers.0.weight"].shape == (512, 256, 1, 1)
    assert state["features.layers.2.weight"].shape == (512, 512)
    residual = timm.create_model("mobilefacenet", blocks=(2, 4, 6, 2)).state_dict()
    assert "layers.1.layers.1.layers.2.layers.1.running_var" in residual


def test_mobilefacenet_keys_and_shapes_match_real_checkpoint(mobilefacenet_weights: Path) -> None:
    model = timm.create_model("mobilefacenet", num_features=128, scale=1)
    with safe_open(mobilefacenet_weights, "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    state = model.state_dict()
    assert len(shapes) == 333
    assert set(state) == set(shapes)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    result = model.load_state_dict(load_file(mobilefacenet_weights), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_fp16_follows_arcface_torch_cuda_autocast() -> None:
    torch.manual_seed(2)
    plain = timm.create_model("iresnet18").eval()
    torch.manual_seed(2)
    half = timm.create_model("iresnet18", fp16=True).eval()
    x = _images(1)
    with torch.no_grad():  # CPU tensors: like torch.cuda.amp.autocast, no effect
        torch.testing.assert_close(half(x), plain(x))
    if torch.cuda.is_available():
        plain, half, x = plain.cuda(), half.cuda(), x.cuda()
        with torch.no_grad():
            assert half.forward_features(x).dtype == torch.float16
            out = half(x)
            assert out.dtype == torch.float32
            assert float(torch.nn.functional.cosine_similarity(out, plain(x)).min()) > 0.99


# --- real weights on real faces --------------------------------------------------------------


def test_real_mobilefacenet_separates_identities(mobilefacenet_weights: Path, celeba_dir: Path) -> None:
    pairs = [p for p in _read_pairs(celeba_dir) if p["fold"] == "0"]
    pairs = [p for p in pairs if p["same"] == "1"][:16] + [p for p in pairs if p["same"] == "0"][:16]
    paths = sorted({p[k] for p in pairs for k in ("path1", "path2")})
    model = _real_mobilefacenet(mobilefacenet_weights)
    emb = _unit(_raw_embeddings(model, _load_faces(celeba_dir / "images", paths)))
    dist = _pair_distances(emb, {p: i for i, p in enumerate(paths)}, pairs)
    same_dist, diff_dist = dist[:16], dist[16:]
    assert same_dist.mean() + 0.4 < diff_dist.mean()
    assert (same_dist[:, None] < diff_dist[None, :]).mean() > 0.9  # pairwise ranking (AUC)


def test_ten_fold_accuracy_helper() -> None:
    rng = np.random.default_rng(0)
    same = np.tile([True, False], 300)
    folds = np.repeat(np.arange(10), 60)
    separable = np.where(same, 0.5, 1.5) + rng.uniform(-0.2, 0.2, same.size)
    assert ten_fold_accuracy(separable, same, folds) == 1.0
    assert ten_fold_accuracy(rng.uniform(0, 2, same.size), same, folds) < 0.6


@pytest.mark.slow
def test_real_mobilefacenet_celeba_verification_accuracy(mobilefacenet_weights: Path, celeba_dir: Path) -> None:
    pairs = _read_pairs(celeba_dir)
    assert len(pairs) == 6000
    paths = sorted({p[k] for p in pairs for k in ("path1", "path2")})
    index = {p: i for i, p in enumerate(paths)}
    faces = _load_faces(celeba_dir / "images", paths)
    model = _real_mobilefacenet(mobilefacenet_weights)
    same = np.array([p["same"] == "1" for p in pairs])
    folds = np.array([int(p["fold"]) for p in pairs])
    plain = _raw_embeddings(model, faces)
    mirrored = _raw_embeddings(model, torch.flip(faces, dims=[3]))
    accuracy = {
        name: ten_fold_accuracy(_pair_distances(_unit(emb), index, pairs), same, folds)
        for name, emb in (("plain", plain), ("flip-TTA", plain + mirrored))
    }
    print(f"CelebA 10-fold verification accuracy: {accuracy}")
    assert accuracy["plain"] >= 0.95
    assert accuracy["flip-TTA"] >= 0.95
