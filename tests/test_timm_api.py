"""BTNet speaks timm's model API: features, head, intermediates, features_only, grad
checkpointing, parameter groups, timm keywords and a data config per path."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import btnet_adapters  # noqa: F401 - timm registration
from btnet_adapters.errors import ConfigError, ResolutionError

from .test_model import perturb, rebuild_branches

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = timm.create_model("btnet_resnet18", embed_dim=16)
    perturb(net)
    rebuild_branches(net)
    return net.eval()


def test_forward_head_of_forward_features_is_forward_on_every_path(model):
    with torch.no_grad():
        for r in model.resolutions:
            x = torch.randn(2, 3, r, r)
            features = model.forward_features(x)
            assert torch.equal(model.forward_head(features), model(x))
            assert torch.equal(model.forward_head(features.clone(), resolution=r), model(x))
            assert torch.equal(model.forward_head(features, pre_logits=True), model(x))
        with pytest.raises(ResolutionError):
            model.forward_features(torch.randn(1, 3, 20, 20))


def test_forward_intermediates_follow_the_path(model):
    with torch.no_grad():
        sides = {r: [t.shape[-1] for t in model.forward_intermediates(torch.randn(1, 3, r, r), intermediates_only=True)]
                 for r in model.resolutions}
        final, inter = model.forward_intermediates(torch.randn(1, 3, 14, 14))
    assert sides == {7: [7] * 5, 14: [14, 14, 14, 14, 7], 28: [28, 28, 28, 14, 7], 112: [56, 56, 28, 14, 7]}
    assert final.shape == (1, 512, 7, 7) and len(inter) == 5
    assert [f["module"] for f in model.feature_info] == [
        "trunk.act1", "trunk.layer1", "trunk.layer2", "trunk.layer3", "trunk.layer4"]
    assert [f["reduction"] for f in model.feature_info] == [2, 2, 4, 8, 16]  # measured: no max-pool


def test_timms_features_only_gives_the_feature_maps_of_each_path():
    net = timm.create_model("btnet_convnext_atto", features_only=True, out_indices=(1, 2, 3)).eval()
    assert net.feature_info.channels() == [80, 160, 320]
    with torch.no_grad():
        assert [t.shape[-1] for t in net(torch.randn(1, 3, 112, 112))] == [14, 7, 3]
        assert [t.shape[-1] for t in net(torch.randn(1, 3, 28, 28))] == [14, 7, 3]
        assert [t.shape[-1] for t in net(torch.randn(1, 3, 14, 14))] == [14, 7, 3]


def test_timm_keywords_reach_the_backbone_or_are_refused():
    net = timm.create_model("btnet_resnet18", drop_path_rate=0.1, drop_rate=0.25, global_pool="avg",
                            resolutions=(14,), embed_dim=16)
    assert net.config()["backbone_kwargs"] == {"drop_path_rate": 0.1}
    assert net.trunk.layer4[1].drop_path is not None and net.trunk.layer4[1].drop_path.drop_prob > 0
    assert net.head.dropout.p == 0.25 and net.config()["head"] == "pool"
    with pytest.raises(ConfigError, match="global_pool='max'"):
        timm.create_model("btnet_resnet18", global_pool="max")
    with pytest.raises(ConfigError, match="head='pool'"):
        timm.create_model("btnet_resnet18", global_pool="avg", head="fc")
    with pytest.raises(ConfigError, match="does not take.*drop_path_rate"):
        timm.create_model("btnet_mobilefacenet", drop_path_rate=0.1)


def test_grad_checkpointing_reaches_every_path_and_keeps_the_results(model):
    x = torch.randn(2, 3, 14, 14)
    net = timm.create_model("btnet_resnet18", resolutions=(14,), embed_dim=16).train()
    net.load_state_dict(model.state_dict(), strict=False)
    torch.manual_seed(1)
    plain = net(x).sum()
    plain.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    net.load_state_dict(model.state_dict(), strict=False)  # the first step moved BN statistics
    net.set_grad_checkpointing(True)
    assert net.trunk.grad_checkpointing and net.path(14).trunk.grad_checkpointing
    torch.manual_seed(1)
    net(x).sum().backward()
    for n, g in grads.items():
        torch.testing.assert_close(dict(net.named_parameters())[n].grad, g, rtol=1e-4, atol=1e-5)


def test_group_matcher_scopes_the_trunks_groups(model):
    groups = model.group_matcher()
    assert groups["stem"].startswith(r"^trunk\.") and groups["head"] == r"^head\."
    names = [n for n, _ in model.named_parameters()]
    from timm.models import group_parameters

    grouped = group_parameters(model, groups)
    assert sum(len(v) for v in grouped.values()) == len(names)
    assert any("trunk.layer4" in n for v in grouped.values() for n in v)


def test_a_data_config_per_path_feeds_the_branch_through_timm_transforms(model):
    cfg = resolve_data_config(model=model.path(14))
    assert cfg["input_size"] == (3, 14, 14) and resolve_data_config(model=model)["input_size"] == (3, 112, 112)
    transform = create_transform(**cfg)
    face = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    x = transform(face)[None]
    assert x.shape == (1, 3, 14, 14)
    with torch.no_grad():
        assert model(x).shape == (1, 16)  # the 14-px branch takes it
    with pytest.raises(ResolutionError):
        model.data_config(20)
