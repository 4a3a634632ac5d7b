"""timm entry points: ``timm.create_model("btnet_resnet50")`` and friends.

Each entry is a few defaults (backbone, pyramid edits, branch resolutions, head) funnelled
into one builder; every default can be overridden by keyword, e.g.
``timm.create_model("btnet_mobilefacenet", embed_dim=128,
backbone_kwargs=dict(num_features=128, scale=1))`` for insightface's released MobileFaceNet.
Passing ``num_classes=N`` attaches a CurricularFace margin head (``margin=`` picks another).
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from . import backbones  # noqa: F401 - registers iresnet*/mobilefacenet with timm
from .errors import ConfigError
from .model import BTNet

#: Defaults of each registered BTNet (JSON-serialisable BTNet arguments).
ZOO: dict[str, dict[str, Any]] = {
    # timm's stem max-pool removed: the face-standard 56/28/14/7 pyramid at 112.
    "btnet_resnet50": dict(backbone="resnet50", remove=["maxpool"]),
    "btnet_resnet18": dict(backbone="resnet18", remove=["maxpool"]),
    "btnet_iresnet50": dict(backbone="iresnet50", head="backbone"),
    "btnet_iresnet100": dict(backbone="iresnet100", head="backbone"),
    "btnet_mobilefacenet": dict(backbone="mobilefacenet", head="backbone"),
    "btnet_convnext_atto": dict(backbone="convnext_atto"),
    "btnet_efficientnet_b0": dict(backbone="efficientnet_b0"),
}
DEFAULT_RESOLUTIONS = [7, 14, 28]


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return dict(
        url="", input_size=(3, 112, 112), fixed_input_size=False, mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0, num_classes=0,
        classifier="classifier", first_conv=None, license="mit", **kwargs,
    )


default_cfgs = generate_default_cfgs({**{name: _cfg() for name in ZOO}, "btnet": _cfg()})


def _create_btnet(variant: str, pretrained: bool = False, **kwargs: Any) -> BTNet:
    args: dict[str, Any] = {"resolutions": DEFAULT_RESOLUTIONS, **ZOO[variant], **kwargs}
    args.pop("global_pool", None)
    return build_model_with_cfg(BTNet, variant, pretrained, **args)


@register_model
def btnet_resnet50(pretrained: bool = False, **kwargs: Any) -> BTNet:
    """timm ResNet-50 without the stem max-pool; branches 7/14/28 at 112."""
    return _create_btnet("btnet_resnet50", pretrained, **kwargs)


@register_model
def btnet_resnet18(pretrained: bool = False, **kwargs: Any) -> BTNet:
    """timm ResNet-18 without the stem max-pool; branches 7/14/28 at 112."""
    return _create_btnet("btnet_resnet18", pretrained, **kwargs)


@register_model
def btnet_iresnet50(pretrained: bool = False, **kwargs: Any) -> BTNet:
    """insightface IR-ResNet-50 (arcface_torch names) as the trunk, as in the BTNet paper."""
    return _create_btnet("btnet_iresnet50", pretrained, **kwargs)


@register_model
def btnet_iresnet100(pretrained: bool = False, **kwargs: Any) -> BTNet:
    """insightface IR-ResNet-100 (arcface_torch names) as the trunk."""
    return _create_btnet("btnet_iresnet100", pretrained, **kwargs)


@register_model
def btnet_mobilefacenet(pretrained: bool = False, **kwargs: Any) -> BTNet:
    """insightface MobileFaceNet (arcface_torch names) with its own GDC embedding head."""
    return _create_btnet("btnet_mobilefacenet", pretrained, **kwargs)


@register_model
def btnet_convnext_atto(pretrained: bool = False, **kwargs: Any) -> BTNet:
    """timm ConvNeXt-Atto; branches 7/14/28 at 112."""
    return _create_btnet("btnet_convnext_atto", pretrained, **kwargs)


@register_model
def btnet_efficientnet_b0(pretrained: bool = False, **kwargs: Any) -> BTNet:
    """timm EfficientNet-B0; branches 7/14/28 at 112."""
    return _create_btnet("btnet_efficientnet_b0", pretrained, **kwargs)


@register_model
def btnet(pretrained: bool = False, **kwargs: Any) -> BTNet:
    """Any hierarchical timm backbone: ``timm.create_model("btnet", backbone="convnext_tiny")``.

    Hub configs of models without a zoo entry record this architecture with their arguments.
    """
    if "backbone" not in kwargs:
        raise ConfigError("btnet needs backbone=, e.g. timm.create_model('btnet', backbone='convnext_tiny')")
    kwargs.setdefault("resolutions", DEFAULT_RESOLUTIONS)
    kwargs.pop("global_pool", None)
    return build_model_with_cfg(BTNet, "btnet", pretrained, **kwargs)
