"""Conversion coverage: every listed timm family converts and runs every resolution end to end."""

from __future__ import annotations

import re

import pytest
import torch

from btnet_adapters import BTNet
from btnet_adapters.errors import UnsupportedBackboneError

from .test_model import perturb, rebuild_branches

FAMILIES = [
    "resnet18", "resnet50", "resnet50d", "seresnext26d_32x4d", "regnety_008", "convnext_atto",
    "efficientnet_b0", "mobilenetv3_large_100", "mobilenetv4_conv_small", "ghostnet_100", "rexnet_100",
    "densenet121", "edgenext_xx_small", "fastvit_t8", "tiny_vit_5m_224", "iresnet50", "mobilefacenet",
    "mixnet_s",  # MixedConv2d subclasses nn.ModuleDict: a layer, not a container to cut into
]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_converts_and_runs_every_resolution(name):
    head = "backbone" if name in ("iresnet50", "mobilefacenet") else "fc"
    model = BTNet.from_timm(name, embed_dim=512 if head == "backbone" else 64, head=head)
    assert {7, 14, 28} <= set(model.branch_resolutions)
    perturb(model)
    rebuild_branches(model)  # construction re-checks every cut and implant shape on perturbed weights
    model.eval()
    with torch.no_grad():
        for side in model.resolutions:
            out = model(torch.randn(2, 3, side, side))
            assert out.shape == (2, model.embed_dim) and torch.isfinite(out).all(), side
            plan = model.branches[str(side)].plan if side != model.input_size else None
            assert plan is None or plan.downsampling, f"{name}: branch {side} removed no downsampling"


@pytest.mark.parametrize("name, kwargs", [
    ("swin_tiny_patch4_window7_224", {"img_size": 112}),
    ("vit_tiny_patch16_224", {"img_size": 112}),
    ("hrnet_w18_small", {}),
])
def test_unsupported_families_raise_the_clear_error(name, kwargs):
    with pytest.raises(UnsupportedBackboneError):
        BTNet.from_timm(name, resolutions=(14,), **kwargs)


def test_default_resolutions_skip_levels_that_cannot_take_a_branch():
    with pytest.warns(UserWarning, match="no branch for pyramid level 7"):
        model = BTNet.from_timm("pvt_v2_b0", embed_dim=32)  # its 8×8 spatial-reduction conv needs ≥ 8 px
    assert model.branch_resolutions == (14, 28)
    with pytest.raises(UnsupportedBackboneError, match="7-px branch"):
        BTNet.from_timm("pvt_v2_b0", resolutions=(7,))


def test_a_parent_reading_its_downsampling_convs_geometry_gets_branches():
    # DaViT's Downsample pads to a multiple of conv.kernel_size before its stride-2 conv: the
    # stride-free view answers with the source's kernel, so the 28-px branch builds; at 7 and 14
    # px that padding grows the map by one, which the construction check catches and names.
    with pytest.warns(UserWarning) as caught:
        model = BTNet.from_timm("davit_tiny", embed_dim=32)
    said = "\n".join(str(w.message) for w in caught)
    assert re.search(r"7-px branch reaches .* \(384, 8, 8\), the trunk with \(384, 7, 7\): a module pads the map", said)
    assert re.search(r"14-px branch reaches .* \(192, 16, 16\), the trunk with \(192, 14, 14\)", said)
    assert 28 in model.branch_resolutions and 7 not in model.branch_resolutions
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 28, 28)).shape == (1, 32)


def test_a_backbone_built_for_another_size_is_told_which():
    with pytest.raises(UnsupportedBackboneError, match=r"built for 224×224 inputs.*input_size=224"):
        BTNet.from_timm("coatnet_nano_rw_224", embed_dim=32)
