"""timm entry points: ``timm.create_model("btnet_resnet50")`` and friends.

Each entry is a few defaults (backbone, pyramid edits, branch resolutions, head) funnelled
into one builder; every default can be overridden by keyword, e.g.
``timm.create_model("btnet_mobilefacenet", embed_dim=128,
backbone_kwargs=dict(num_features=128, scale=1))`` for insightface's released MobileFaceNet.
Passing ``num_classes=N`` attaches a CurricularFace margin head (``margin=`` picks another).

Saved models: ``timm.create_model("local-dir:<folder>")`` and ``("hf-hub:<org/name>")`` pass
the folder's ``config.json`` ``model_args`` here; they are checked like
:func:`btnet_adapters.hub.from_pretrained` checks them (architecture arguments only, within the
documented limits) before anything is built, and with ``pretrained=True`` the weights are loaded
by :func:`btnet_adapters.hub.load_artifact_weights` (recorded checksums, header-first
safetensors reads, trunk fingerprint) instead of timm's unchecked loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from . import backbones  # noqa: F401 - registers iresnet*/mobilefacenet with timm
from . import hub
from ._zoo_table import DEFAULT_RESOLUTIONS, ZOO  # noqa: F401 - the zoo's table, kept low for the hub
from .errors import ConfigError
from .model import BTNet


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return dict(
        url="", input_size=(3, 112, 112), fixed_input_size=False, mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0, num_classes=0,
        classifier="classifier", first_conv=None, license="mit", **kwargs,
    )


default_cfgs = generate_default_cfgs({**{name: _cfg() for name in ZOO}, "btnet": _cfg()})


#: timm keywords that belong to the backbone: they are passed on in ``backbone_kwargs``.
BACKBONE_KEYWORDS = ("drop_path_rate", "drop_block_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate")


def _route_timm_keywords(kwargs: dict[str, Any]) -> None:
    """timm's model keywords reach the part they belong to, or are refused with the reason:
    regularisation rates go to the backbone, ``drop_rate`` is BTNet's dropout before the
    embedding layer, ``global_pool="avg"`` selects ``head="pool"``, ``features_only`` returns
    the paths' feature maps (timm's ``FeatureGetterNet`` over :meth:`BTNet.forward_intermediates`)."""
    backbone_kwargs = dict(kwargs.get("backbone_kwargs") or {})
    for key in BACKBONE_KEYWORDS:
        if key in kwargs:
            backbone_kwargs[key] = kwargs.pop(key)
    if backbone_kwargs:
        kwargs["backbone_kwargs"] = backbone_kwargs
    pool = kwargs.pop("global_pool", None)
    head = kwargs.get("head", "fc")
    if pool not in (None, "", "avg"):
        raise ConfigError(f"global_pool={pool!r} is not available: BTNet's embedding head averages (head='pool', "
                          "global_pool='avg') or flattens the final map (head='fc', arcface_torch's)")
    if pool == "avg":
        if head not in ("fc", "pool") or ("head" in kwargs and head != "pool"):
            raise ConfigError(f"global_pool='avg' means head='pool', but head={head!r} was given"
                              + ("; the backbone's own head makes the embedding" if head == "backbone" else ""))
        kwargs["head"] = "pool"
    if pool == "" and head == "pool":
        raise ConfigError("global_pool='' (no pooling) conflicts with head='pool'; use head='fc' (flatten)")
    if kwargs.get("features_only"):
        kwargs.setdefault("feature_cls", "getter")


def _build(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> BTNet:
    """timm's builder, except for saved models (``local-dir:`` / ``hf-hub:``): their arguments are
    checked first and their weights loaded with the artifact's own checks."""
    _route_timm_keywords(kwargs)
    source = hub.artifact_source(kwargs.get("pretrained_cfg"))
    saved = kwargs.get("pretrained_model_args")
    if source is not None or saved is not None:
        origin = f"{source[0]}:{source[1]}" if source else variant
        hub.check_saved_model_args(saved or {}, origin)
    if not (pretrained and source is not None):
        return build_model_with_cfg(BTNet, variant, pretrained, **kwargs)
    model = build_model_with_cfg(BTNet, variant, False, **kwargs)
    return hub.load_artifact_weights(model, source, saved_args=saved, cache_dir=kwargs.get("cache_dir"))


def _create_btnet(variant: str, pretrained: bool = False, **kwargs: Any) -> BTNet:
    args: dict[str, Any] = {"resolutions": DEFAULT_RESOLUTIONS, **ZOO[variant], **kwargs}
    return _build(variant, pretrained, args)


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
    return _build("btnet", pretrained, kwargs)


def build_model(name: str, input_size: int = 112, resolutions: Sequence[int] | None = None) -> BTNet:
    """A zoo model by its ``btnet_*`` name, or any timm backbone converted with :meth:`BTNet.from_timm`."""
    if name.startswith("btnet_"):
        kwargs = {"resolutions": list(resolutions)} if resolutions else {}
        return timm.create_model(name, **kwargs)
    return BTNet.from_timm(name, input_size=input_size, resolutions=resolutions)
