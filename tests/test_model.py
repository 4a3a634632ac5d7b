"""BTNet behaviour: routing, branch numerics, per-resolution state, adapters, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

import btnet_adapters  # noqa: F401 - timm registration
from btnet_adapters import BTNet
from btnet_adapters.errors import (
    ConfigError,
    InputImageError,
    ResolutionError,
    UnknownDownsamplingError,
    UnsupportedBackboneError,
)
from btnet_adapters.resize import ResizeSpec, resize_tensor
from btnet_adapters.surgery import StrideFreeConv2d


def perturb(module: nn.Module, seed: int = 1) -> None:
    """Random weights and norm statistics: fresh BN / zero-init layers make wrong cuts look right."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("weight", "bias", "running_mean")):
                t.add_(torch.randn(t.shape, generator=gen) * 0.1)


def rebuild_branches(model: BTNet) -> None:
    for r in model.branch_resolutions:
        model.remove_branch(r)
        model.add_branch(r)


def perturbed_resnet18(embed_dim: int) -> BTNet:
    """timm ResNet-18 without its max-pool, branches 7/14/28, perturbed weights, eval mode."""
    torch.manual_seed(0)
    model = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(7, 14, 28), embed_dim=embed_dim)
    perturb(model)
    rebuild_branches(model)
    return model.eval()


@pytest.fixture(scope="module")
def resnet18_btnet() -> BTNet:
    return perturbed_resnet18(64)


def test_zoo_entry_points_route_by_side():
    assert {"btnet_resnet50", "btnet_iresnet50", "btnet_mobilefacenet"} <= set(timm.list_models("btnet_*"))
    model = timm.create_model("btnet_resnet18").eval()
    assert model.resolutions == (7, 14, 28, 112)
    for side in model.resolutions:
        assert model(torch.randn(2, 3, side, side)).shape == (2, 512)


def test_timm_num_classes_attaches_curricularface():
    model = timm.create_model("btnet_resnet18", num_classes=10)
    assert type(model.get_classifier()).__name__ == "CurricularFace"
    emb = model(torch.randn(2, 3, 14, 14))
    assert model.classifier(emb, torch.tensor([1, 2])).shape == (2, 10)


@pytest.mark.parametrize("resolution, strided", [
    (7, ["conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1", "layer3.0.downsample.0",
         "layer4.0.conv1", "layer4.0.downsample.0"]),
    (14, ["conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1", "layer3.0.downsample.0"]),
    (28, ["conv1", "layer2.0.conv1", "layer2.0.downsample.0"]),
])
def test_branch_equals_hand_made_stride_free_trunk(resnet18_btnet, resolution, strided):
    """Independent reference: a copy of the trunk whose strides before the implant stage are set to 1 by hand."""
    model = resnet18_btnet
    reference = copy.deepcopy(model.trunk)
    for path in strided:
        conv = reference.get_submodule(path)
        assert conv.stride == (2, 2)
        conv.stride = (1, 1)
    x = torch.randn(3, 3, resolution, resolution)
    with torch.no_grad():
        expected = model.head(reference.forward_features(x))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    plan = model.branches[str(resolution)].plan
    assert sorted(p for p, _ in plan.downsampling) == sorted(f"trunk.{p}" for p in strided)


def test_trunk_path_equals_bare_timm_model():
    bare = timm.create_model("resnet18", num_classes=32).eval()
    perturb(bare)
    model = BTNet.from_timm(copy.deepcopy(bare), head="backbone", embed_dim=32, resolutions=(14,)).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), bare(x))


def test_forward_with_implant_gives_teacher_and_student_features(resnet18_btnet):
    model = resnet18_btnet
    with torch.no_grad():
        emb_t, z_t = model.forward_with_implant(torch.randn(2, 3, 112, 112), 14)
        emb_s, z_s = model.forward_with_implant(torch.randn(2, 3, 14, 14), 14)
    assert z_t.shape == z_s.shape == (2, 256, 14, 14)
    assert emb_t.shape == emb_s.shape == (2, 64)


def test_norm_state_is_per_resolution():
    model = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(7, 14), embed_dim=32)
    trunk_stats = model.trunk.layer4[1].bn2.running_mean.clone()
    b7_stats = model.branch_state_dict(7)["trunk.layer4.1.bn2.running_mean"].clone()
    model.train()
    model(torch.randn(4, 3, 14, 14))
    b14 = model.branch_state_dict(14)
    assert not torch.equal(b14["trunk.layer4.1.bn2.running_mean"], trunk_stats)
    torch.testing.assert_close(model.trunk.layer4[1].bn2.running_mean, trunk_stats)
    torch.testing.assert_close(model.branch_state_dict(7)["trunk.layer4.1.bn2.running_mean"], b7_stats)
    model(torch.randn(4, 3, 112, 112))
    assert not torch.equal(model.trunk.layer4[1].bn2.running_mean, trunk_stats)
    torch.testing.assert_close(model.branch_state_dict(14)["trunk.layer4.1.bn2.running_mean"],
                               b14["trunk.layer4.1.bn2.running_mean"])


def test_shared_layers_are_views_not_copies():
    model = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(28,), embed_dim=32)
    keys = model.state_dict().keys()
    assert sum(k.endswith("layer4.1.conv1.weight") for k in keys) == 1
    sd = model.branch_state_dict(28)
    assert not any("layer4.1.conv1" in k or k.startswith("head.fc") for k in sd)
    assert "trunk.layer2.0.conv1.weight" in sd and "trunk.layer4.1.bn1.weight" in sd
    model.train()
    model(torch.randn(2, 3, 28, 28)).sum().backward()
    assert model.trunk.layer4[1].conv1.weight.grad is not None  # the shared trunk layer ran
    assert model.trunk.layer1[0].conv1.weight.grad is None  # the branch's own copy ran instead


def test_branch_paths_follow_changes_of_the_model():
    """Branch paths are built once; changed tensors, a copied model, a replaced branch and (after
    ``rebuild_paths``) a module replaced by hand must still run the current modules."""
    torch.manual_seed(0)
    model = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(14, 28), embed_dim=32).eval()
    perturb(model)
    rebuild_branches(model)
    x = torch.randn(2, 3, 14, 14)
    with torch.no_grad():
        first = model(x)
        assert torch.equal(model(x), first)
        twin = copy.deepcopy(model)  # a copy runs its own modules, not the original's
        assert torch.equal(twin(x), first)
        perturb(twin.branches["14"], seed=5)  # its branch copies (and the views wrapping them)
        changed = twin(x)
        assert not torch.allclose(changed, first) and torch.equal(model(x), first)
        perturb(twin.trunk.layer4, seed=6)  # its shared trunk
        assert not torch.allclose(twin(x), changed) and torch.equal(model(x), first)
        # a shared trunk module replaced by hand is used once the paths are rebuilt
        original = model.trunk.layer4[1].conv2
        other = copy.deepcopy(original)
        perturb(other, seed=7)
        model.trunk.layer4[1].conv2 = other
        model.rebuild_paths()
        replaced = model(x)
        assert not torch.allclose(replaced, first)
        model.trunk.layer4[1].conv2 = original
        model.rebuild_paths()
        assert torch.equal(model(x), first)
        state = model.branch_state_dict(14)  # a branch removed and rebuilt gets fresh paths
        model.remove_branch(14)
        model.add_branch(14)
        model.load_branch_state_dict(14, state)
        assert torch.equal(model(x), first)
    # the model's own tree never holds a stride-free view: branch paths are views beside it
    assert not any(isinstance(m, StrideFreeConv2d) for m in model.modules())
    assert model.trunk.layer1[0].conv1.stride == (1, 1) and model.trunk.layer2[0].conv1.stride == (2, 2)
    assert any(isinstance(m, StrideFreeConv2d) for m in model.path(14).modules())


def test_branch_state_dict_round_trip_and_strictness():
    source = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(14,), embed_dim=32).eval()
    target = copy.deepcopy(source)
    perturb(source.branches["14"])
    x = torch.randn(2, 3, 14, 14)
    with torch.no_grad():
        assert not torch.allclose(source(x), target(x))
        target.load_branch_state_dict(14, source.branch_state_dict(14))
        torch.testing.assert_close(source(x), target(x))
    sd = source.branch_state_dict(14)
    sd.pop(next(iter(sd)))
    with pytest.raises(ConfigError, match="missing"):
        target.load_branch_state_dict(14, sd)


def test_specific_rules_select_the_owned_tensors():
    none = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(14,), embed_dim=32, specific="none")
    assert all(".bn" in k or "downsample.1" in k or k.startswith("head.") for k in none.branch_state_dict(14))
    explicit = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(14,), embed_dim=32,
                               specific=["trunk.conv1", "trunk.layer1"])
    keys = explicit.branch_state_dict(14)
    assert "trunk.layer1.0.conv1.weight" in keys and "trunk.layer2.0.conv1.weight" not in keys
    everything = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(14,), embed_dim=32, specific="all")
    assert set(everything.branch_state_dict(14)) == set(everything.trunk_state_dict())
    with pytest.raises(ConfigError):
        BTNet.from_timm("resnet18", resolutions=(14,), specific=["trunk.nope"])


def test_iresnet50_trainable_shares_match_the_paper():
    model = timm.create_model("btnet_iresnet50")
    total = sum(p.numel() for p in model.trunk.parameters())
    shares = {r: sum(p.numel() for p in model.branch_parameters(r)) / total for r in (7, 14, 28)}
    assert model.branches["28"].plan.implant == "trunk.layer2.0"
    assert shares[28] == pytest.approx(0.011, abs=0.001)
    assert shares[14] == pytest.approx(0.053, abs=0.001)
    assert shares[7] == pytest.approx(0.489, abs=0.001)


def test_embed_routes_resizes_and_keeps_order(resnet18_btnet):
    model = resnet18_btnet
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    big = torch.rand(3, 112, 112)
    grey = Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8))
    vecs = model.embed([hwc, big, grey])
    assert vecs.shape == (3, 64)
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(3))
    assert [model.route(w, h) for w, h in [(20, 24), (112, 112), (9, 9)]] == [28, 112, 14]
    pixels = torch.from_numpy(hwc).permute(2, 0, 1).float()
    x = model.normalize(resize_tensor(pixels, 28, model.resize_spec))[None]
    with torch.no_grad():
        expected = nn.functional.normalize(model(x), dim=1)[0]
    torch.testing.assert_close(vecs[0], expected, rtol=1e-4, atol=1e-5)
    flipped = model.embed([hwc], flip=True, normalize=False)
    with torch.no_grad():
        torch.testing.assert_close(flipped[0], (model(x) + model(torch.flip(x, dims=[3])))[0], rtol=1e-4, atol=1e-4)


def test_embed_respects_the_recorded_resize_spec():
    model = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(14,), embed_dim=16,
                            resize=ResizeSpec("cv2", "bilinear", antialias=False))
    assert model.config()["resize"] == {"backend": "cv2", "filter": "bilinear", "antialias": False}
    assert model.embed([np.zeros((50, 50, 3), np.uint8)]).shape == (1, 16)


@pytest.mark.parametrize("bad, error, match", [
    (torch.randn(2, 1, 14, 14), InputImageError, "channels"),
    (torch.randn(2, 3, 14, 16), InputImageError, "square"),
    (torch.full((1, 3, 14, 14), float("nan")), InputImageError, "NaN"),
    (torch.randn(0, 3, 14, 14), InputImageError, "empty"),
    (torch.randn(1, 3, 20, 20), ResolutionError, "embed"),
    (np.zeros((14, 14, 3)), InputImageError, "tensor"),
])
def test_forward_rejects_bad_inputs(resnet18_btnet, bad, error, match):
    with pytest.raises(error, match=match):
        resnet18_btnet(bad)


def test_embed_rejects_bad_inputs(resnet18_btnet):
    with pytest.raises(ConfigError, match="indicator"):
        resnet18_btnet.embed([np.zeros((9, 9, 3), np.uint8)], indicator="median")
    with pytest.raises(ConfigError, match="strategy"):
        resnet18_btnet.embed([np.zeros((9, 9, 3), np.uint8)], strategy="round")
    with pytest.raises(InputImageError, match="no images"):
        resnet18_btnet.embed([])
    with pytest.raises(InputImageError, match="channels"):
        resnet18_btnet.embed([np.zeros((9, 9, 4), np.uint8)])
    with pytest.raises(InputImageError, match="image 1"):
        resnet18_btnet.embed([np.zeros((9, 9, 3), np.uint8), "face.jpg"])


def test_construction_errors_name_the_cause():
    with pytest.raises(ResolutionError, match=r"available: \[7, 14, 28, 56\]"):
        BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(20,))
    with pytest.raises(UnsupportedBackboneError, match="not hierarchical"):
        BTNet.from_timm("vit_tiny_patch16_224", img_size=112)
    with pytest.raises(UnknownDownsamplingError, match="PatchMerging"):
        BTNet.from_timm("swin_tiny_patch4_window7_224", img_size=112, resolutions=(14,))
    with pytest.raises(UnsupportedBackboneError, match="unknown timm model"):
        BTNet.from_timm("no_such_model_xyz")
    with pytest.raises(ConfigError, match="head"):
        BTNet.from_timm("resnet18", head="mlp")
    with pytest.raises(ConfigError, match="specific"):
        BTNet.from_timm("resnet18", specific="some")
    with pytest.raises(ConfigError, match="remove"):
        BTNet.from_timm("resnet18", remove=["nope"])
