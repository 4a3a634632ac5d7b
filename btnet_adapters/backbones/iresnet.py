"""IR-ResNet face backbones of insightface ``arcface_torch`` as timm models.

Architecture and parameter names are those of insightface
``recognition/arcface_torch/backbones/iresnet.py``, so arcface_torch checkpoints load
with ``strict=True``. Registered with timm (when ``btnet_adapters.backbones`` is
imported) as ``iresnet18``, ``iresnet34``, ``iresnet50``, ``iresnet100`` and
``iresnet200``.

The module also holds :class:`FaceEmbeddingNet`, the timm API shared by the
arcface_torch embedding backbones (this one and :mod:`.mobilefacenet`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from btnet_adapters.errors import ConfigError, ResolutionError

__all__ = [
    "FaceEmbeddingNet",
    "IBasicBlock",
    "IResNet",
    "face_pretrained_cfg",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
]

#: Stage depths of the arcface_torch variants.
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}

_BN_EPS = 1e-05


def face_pretrained_cfg(first_conv: str, **kwargs: Any) -> dict[str, Any]:
    """timm pretrained config of an arcface_torch embedding backbone.

    Args:
        first_conv: Name of the first convolution (for timm's input-channel adaptation).
        **kwargs: Entries that override the defaults.

    Returns:
        A dict for ``generate_default_cfgs``: 112x112 RGB input normalised with mean and
        std 0.5 (``(x - 127.5) / 127.5``), bilinear resizing, no classifier.
    """
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 112, 112),
        "pool_size": (7, 7),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": first_conv,
        "classifier": None,
        "origin_url": "https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch",
        **kwargs,
    }


class FaceEmbeddingNet(nn.Module, metaclass=abc.ABCMeta):
    """Base of the arcface_torch embedding backbones: the uniform timm model API.

    Subclasses build their layers and implement ``stage_forwards`` (and ``forward_tail`` when
    something runs between the last stage and the head), ``forward_head_impl`` and
    ``prune_intermediate_layers``; ``forward_features`` and ``forward_intermediates`` are
    written once here on top of them.
    These are embedding networks: they have no classifier (``num_classes`` is always 0;
    classification heads are margin heads attached by BTNet), and ``num_features`` is the
    embedding size (as in arcface_torch), also exposed as ``head_hidden_size``.

    Args:
        num_features: Embedding size.
        fp16: As arcface_torch: run the body under CUDA float16 autocast and the
            embedding projection in float32. Like arcface_torch's
            ``torch.cuda.amp.autocast``, it has no effect on CPU tensors.
        num_classes: Must be 0.
    """

    #: Spatial size of the map the embedding head expects (the body's output at 112x112).
    head_map_size: tuple[int, int] = (7, 7)

    def __init__(self, num_features: int, fp16: bool, num_classes: int) -> None:
        super().__init__()
        name = type(self).__name__
        if num_classes != 0:
            raise ConfigError(
                f"{name} is a face embedding network: num_classes must be 0, got {num_classes}. "
                "Classification (margin) heads are attached by BTNet / btnet_adapters.heads; "
                "use num_features to set the embedding size."
            )
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ConfigError(f"{name}: num_features (embedding size) must be a positive int, got {num_features!r}")
        if not isinstance(fp16, bool):
            raise ConfigError(f"{name}: fp16 must be True or False, got {fp16!r}")
        self.num_classes = 0
        self.num_features = num_features
        self.head_hidden_size = num_features
        self.fp16 = fp16
        self.head_pruned = False
        self.feature_info: list[dict[str, Any]] = []

    def body_autocast(self, x: torch.Tensor) -> torch.autocast:
        """The autocast context of the body (float16 on CUDA tensors when ``fp16``)."""
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16 and x.is_cuda)

    def get_classifier(self) -> nn.Module:
        """The classifier, which an embedding network does not have (an identity)."""
        return nn.Identity()

    def reset_classifier(self, num_classes: int = 0, global_pool: str | None = None) -> None:
        """Accept ``num_classes=0`` (timm's "remove the classifier"); refuse anything else.

        ``global_pool`` is part of timm's signature; these heads do not pool.

        Raises:
            ConfigError: If ``num_classes`` is not 0.
        """
        if num_classes != 0:
            raise ConfigError(
                f"{type(self).__name__} has no classifier to reset to {num_classes} classes; "
                "classification (margin) heads are attached by BTNet / btnet_adapters.heads"
            )

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Embedding of a ``forward_features`` map.

        Args:
            x: Feature map ``(B, C, 7, 7)``.
            pre_logits: Accepted for timm compatibility; there are no logits, so the
                embedding is returned either way.

        Returns:
            Raw (not L2-normalised) embeddings ``(B, num_features)``.

        Raises:
            ConfigError: If the head was removed by ``prune_intermediate_layers``.
            ResolutionError: If the map is not 7x7 (the input was not 112x112).
        """
        if self.head_pruned:
            raise ConfigError(
                f"{type(self).__name__}: the embedding head was removed by prune_intermediate_layers"
            )
        if isinstance(x, torch.Tensor) and not torch.jit.is_tracing():
            if tuple(x.shape[-2:]) != self.head_map_size:
                raise ResolutionError(
                    f"{type(self).__name__}: the embedding head needs a {self.head_map_size} feature map "
                    f"(a 112x112 input), got {tuple(x.shape[-2:])}"
                )
        return self.forward_head_impl(x)

    @abc.abstractmethod
    def forward_head_impl(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding head of the subclass (called by ``forward_head`` after the checks)."""

    @abc.abstractmethod
    def stage_forwards(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """One function per ``feature_info`` stage, from the previous stage's output (the image,
        for the first stage, which includes the stem) to this stage's output. Built on each call
        so that modules swapped in or pruned since are the ones that run."""

    def forward_tail(self, x: torch.Tensor) -> torch.Tensor:
        """What runs between the last stage and the head, outside the body's autocast (nothing)."""
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Body: ``(B, 3, 112, 112)`` images to the ``(B, C, 7, 7)`` map before the head."""
        with self.body_autocast(x):
            for stage in self.stage_forwards():
                x = stage(x)
        return self.forward_tail(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (``feature_info`` order) and, unless ``intermediates_only``, the final map.

        Args:
            x: Input images ``(B, 3, H, W)``.
            indices: Stages to return (timm semantics: None all, int last n, or a list).
            norm: Must be False.
            stop_early: Stop after the last requested stage (the final map is then that
                stage's output; otherwise it is ``forward_features``'s).
            output_fmt: Must be ``"NCHW"``.
            intermediates_only: Return only the list of stage outputs.

        Returns:
            The stage outputs, or ``(final map, stage outputs)``.
        """
        take_indices, max_index = self.take_indices(indices, norm, output_fmt)
        early = stop_early or intermediates_only
        stages = self.stage_forwards()
        if early:
            stages = stages[: max_index + 1]
        intermediates = []
        with self.body_autocast(x):
            for i, stage in enumerate(stages):
                x = stage(x)
                if i in take_indices:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        return (x if early else self.forward_tail(x)), intermediates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, num_features)`` of ``(B, 3, 112, 112)`` normalised images."""
        return self.forward_head(self.forward_features(x))

    def take_indices(
        self, indices: int | Sequence[int] | None, norm: bool = False, output_fmt: str = "NCHW"
    ) -> tuple[list[int], int]:
        """Absolute stage indices for ``forward_intermediates`` (timm semantics).

        Args:
            indices: None for all stages, an int n for the last n, or a sequence of
                (possibly negative) indices into ``feature_info``.
            norm: Must be False: stage outputs have no separate norm layer.
            output_fmt: Must be ``"NCHW"``.

        Returns:
            The absolute indices and the largest of them.
        """
        if norm:
            raise ConfigError(f"{type(self).__name__}: stage outputs have no norm layer; use norm=False")
        if output_fmt != "NCHW":
            raise ConfigError(f"{type(self).__name__}: output_fmt must be 'NCHW', got {output_fmt!r}")
        try:
            return feature_take_indices(len(self.feature_info), indices)
        except AssertionError as exc:
            raise ConfigError(f"{type(self).__name__}: bad feature indices {indices!r}: {exc}") from exc

    def pruned_stage_indices(self, indices: int | Sequence[int], prune_head: bool) -> tuple[list[int], int]:
        """Validate a ``prune_intermediate_layers`` request and mark the head pruned.

        Returns:
            The absolute indices kept and the largest of them.
        """
        take_indices, max_index = self.take_indices(indices)
        if not prune_head and max_index < len(self.feature_info) - 1:
            raise ConfigError(
                f"{type(self).__name__}: the embedding head needs the last stage; "
                "pruning later stages requires prune_head=True"
            )
        self.head_pruned = self.head_pruned or prune_head
        return take_indices, max_index


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """Improved residual block: BN, conv3x3, BN, PReLU, conv3x3 (strided), BN, + shortcut.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        stride: Stride of ``conv2`` (and of the shortcut).
        downsample: Shortcut projection (``Sequential(conv1x1, BN)``) or None.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=_BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus (projected) input."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        return out + identity


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One stage: a (strided, projecting) first block followed by ``blocks - 1`` blocks."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes, eps=_BN_EPS))
    layers = [IBasicBlock(inplanes, planes, stride, downsample)]
    layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class IResNet(FaceEmbeddingNet):
    """IR-ResNet of insightface arcface_torch (same modules, names and initialisation).

    Stem conv3x3/s1 + BN + PReLU at 112x112, four stages of :class:`IBasicBlock` with
    64/128/256/512 channels, each halving the map (56, 28, 14, 7), then the head
    ``bn2 -> flatten -> dropout -> fc (512*7*7 -> num_features) -> features``
    (BatchNorm1d whose weight is frozen at 1).

    Args:
        layers: Blocks per stage, e.g. ``(3, 4, 14, 3)`` for IR-ResNet-50.
        dropout: Dropout probability before ``fc``.
        num_features: Embedding size.
        zero_init_residual: As arcface_torch: zero the weight of every block's ``bn2``.
        fp16: See :class:`FaceEmbeddingNet` (body and ``bn2`` under CUDA float16 autocast,
            ``fc`` and ``features`` in float32).
        in_chans: Input channels (3 for RGB).
        num_classes: Must be 0.
    """

    fc_scale = 7 * 7

    def __init__(
        self,
        layers: Sequence[int],
        dropout: float = 0.0,
        num_features: int = 512,
        zero_init_residual: bool = False,
        fp16: bool = False,
        in_chans: int = 3,
        num_classes: int = 0,
    ) -> None:
        super().__init__(num_features=num_features, fp16=fp16, num_classes=num_classes)
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ConfigError(f"IResNet: layers must be 4 positive block counts, got {tuple(layers)!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"IResNet: dropout must be in [0, 1), got {dropout!r}")
        widths = (64, 128, 256, 512)
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=_BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            self.add_module(f"layer{i + 1}", _make_layer(inplanes, planes, int(blocks), stride=2))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(widths[-1] * IBasicBlock.expansion, eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(widths[-1] * IBasicBlock.expansion * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=_BN_EPS)
        self.feature_info = [
            dict(num_chs=planes, reduction=2 ** (i + 1), module=f"layer{i + 1}") for i, planes in enumerate(widths)
        ]
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """arcface_torch initialisation: conv N(0, 0.1), norms (1, 0), frozen unit ``features.weight``."""
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def stage_forwards(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Stem + ``layer1``, then ``layer2 .. layer4``."""
        return [lambda x: self.layer1(self.forward_stem(x)), self.layer2, self.layer3, self.layer4]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """``conv1 -> bn1 -> prelu`` (full resolution)."""
        return self.prelu(self.bn1(self.conv1(x)))

    def forward_head_impl(self, x: torch.Tensor) -> torch.Tensor:
        """``bn2 -> flatten -> dropout -> fc -> features``."""
        with self.body_autocast(x):
            x = self.bn2(x)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last requested one and (``prune_head``) the embedding head.

        ``prune_norm`` is part of timm's signature; the only post-body norm (``bn2``)
        belongs to the head and goes with ``prune_head``.

        Returns:
            The absolute indices kept.
        """
        take_indices, max_index = self.pruned_stage_indices(indices, prune_head)
        for i in range(max_index + 1, len(self.feature_info)):
            setattr(self, f"layer{i + 1}", nn.Identity())
        if prune_head:
            for name in ("bn2", "dropout", "fc", "features"):
                setattr(self, name, nn.Identity())
        return take_indices


def _create_iresnet(variant: str, pretrained: bool = False, **kwargs: Any) -> IResNet:
    return build_model_with_cfg(
        IResNet,
        variant,
        pretrained,
        layers=IRESNET_LAYERS[variant],
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({name: face_pretrained_cfg("conv1") for name in IRESNET_LAYERS})


@register_model
def iresnet18(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IR-ResNet-18 (arcface_torch ``r18``)."""
    return _create_iresnet("iresnet18", pretrained, **kwargs)


@register_model
def iresnet34(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IR-ResNet-34 (arcface_torch ``r34``)."""
    return _create_iresnet("iresnet34", pretrained, **kwargs)


@register_model
def iresnet50(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IR-ResNet-50 (arcface_torch ``r50``), 43.6 M parameters with a 512-d embedding."""
    return _create_iresnet("iresnet50", pretrained, **kwargs)


@register_model
def iresnet100(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IR-ResNet-100 (arcface_torch ``r100``)."""
    return _create_iresnet("iresnet100", pretrained, **kwargs)


@register_model
def iresnet200(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IR-ResNet-200 (arcface_torch ``r200``)."""
    return _create_iresnet("iresnet200", pretrained, **kwargs)
