"""MobileFaceNet of insightface ``arcface_torch`` as a timm model.

Architecture and parameter names are those of insightface
``recognition/arcface_torch/backbones/mobilefacenet.py``, so its checkpoints (and the
converted MXNet ``fmobilefacenet``, ``num_features=128, scale=1``) load with
``strict=True``. Registered with timm as ``mobilefacenet`` when
``btnet_adapters.backbones`` is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from itertools import islice
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from btnet_adapters.backbones.iresnet import FaceEmbeddingNet, face_pretrained_cfg
from btnet_adapters.errors import ConfigError

__all__ = ["ConvBlock", "DepthWise", "GDC", "LinearBlock", "MobileFaceNet", "Residual", "mobilefacenet"]

_Pair = tuple[int, int]

#: Index in ``MobileFaceNet.layers`` of the last module of each stage (maps 56, 28, 14, 7 at 112).
STAGE_ENDS: tuple[int, int, int, int] = (1, 3, 5, 7)


class LinearBlock(nn.Module):
    """Convolution + BatchNorm, stored as ``.layers`` (``layers.0`` conv, ``layers.1`` BN).

    Args:
        in_c: Input channels.
        out_c: Output channels.
        kernel: Kernel size.
        stride: Stride.
        padding: Padding.
        groups: Convolution groups.
    """

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: _Pair = (1, 1),
        stride: _Pair = (1, 1),
        padding: _Pair = (0, 0),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution then BatchNorm."""
        return self.layers(x)


class ConvBlock(LinearBlock):
    """Convolution + BatchNorm + PReLU, stored as ``.layers`` (indices 0, 1, 2).

    Takes the arguments of :class:`LinearBlock`.
    """

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: _Pair = (1, 1),
        stride: _Pair = (1, 1),
        padding: _Pair = (0, 0),
        groups: int = 1,
    ) -> None:
        super().__init__(in_c, out_c, kernel, stride, padding, groups)
        self.layers.append(nn.PReLU(out_c))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` channels, depthwise conv, 1x1 linear project.

    Args:
        in_c: Input channels.
        out_c: Output channels.
        residual: Add the input to the output.
        kernel: Depthwise kernel size.
        stride: Depthwise stride.
        padding: Depthwise padding.
        groups: Expanded (depthwise) channels.
    """

    def __init__(
        self,
        in_c: int,
        out_c: int,
        residual: bool = False,
        kernel: _Pair = (3, 3),
        stride: _Pair = (2, 2),
        padding: _Pair = (1, 1),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
            ConvBlock(groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride),
            LinearBlock(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck output, plus the input when ``residual``."""
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual :class:`DepthWise` blocks, stored as ``.layers``.

    Args:
        c: Channels.
        num_block: Number of blocks.
        groups: Expanded channels of each block.
        kernel: Depthwise kernel size.
        stride: Depthwise stride.
        padding: Depthwise padding.
    """

    def __init__(
        self,
        c: int,
        num_block: int,
        groups: int,
        kernel: _Pair = (3, 3),
        stride: _Pair = (1, 1),
        padding: _Pair = (1, 1),
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, True, kernel, stride, padding, groups) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks in order."""
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head: 7x7 depthwise LinearBlock, flatten, Linear, BatchNorm1d.

    Args:
        embedding_size: Output embedding size.
    """

    def __init__(self, embedding_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, groups=512, kernel=(7, 7), stride=(1, 1), padding=(0, 0)),
            nn.Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 512, 7, 7)`` map to ``(B, embedding_size)`` embedding."""
        return self.layers(x)


class MobileFaceNet(FaceEmbeddingNet):
    """MobileFaceNet of insightface arcface_torch (same modules, names and initialisation).

    ``layers`` (ModuleList): stem ConvBlock (stride 2, 56x56), depthwise ConvBlock (or a
    Residual when ``blocks[0] > 1``), then DepthWise (stride 2) / Residual pairs at 28,
    14 and 7; ``conv_sep`` (1x1 ConvBlock to 512); ``features`` (:class:`GDC`).

    Args:
        fp16: See :class:`FaceEmbeddingNet` (``layers`` under CUDA float16 autocast,
            ``conv_sep`` and ``features`` in float32, as arcface_torch).
        num_features: Embedding size.
        blocks: Blocks of the four stages.
        scale: Channel multiplier (64 * scale and 128 * scale channels).
        in_chans: Input channels (3 for RGB).
        num_classes: Must be 0.
    """

    def __init__(
        self,
        fp16: bool = False,
        num_features: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        in_chans: int = 3,
        num_classes: int = 0,
    ) -> None:
        super().__init__(num_features=num_features, fp16=fp16, num_classes=num_classes)
        if len(blocks) != 4 or any(int(n) < 1 for n in blocks):
            raise ConfigError(f"MobileFaceNet: blocks must be 4 positive block counts, got {tuple(blocks)!r}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ConfigError(f"MobileFaceNet: scale must be a positive int, got {scale!r}")
        self.scale = scale
        c64, c128 = 64 * scale, 128 * scale
        stem_dw: nn.Module
        if blocks[0] == 1:
            stem_dw = ConvBlock(c64, c64, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64)
        else:
            stem_dw = Residual(c64, num_block=blocks[0], groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
        self.layers = nn.ModuleList(
            [
                ConvBlock(in_chans, c64, kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
                stem_dw,
                DepthWise(c64, c64, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128),
                Residual(c64, num_block=blocks[1], groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
                DepthWise(c64, c128, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256),
                Residual(c128, num_block=blocks[2], groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
                DepthWise(c128, c128, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512),
                Residual(c128, num_block=blocks[3], groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
            ]
        )
        self.conv_sep = ConvBlock(c128, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        self.features = GDC(num_features)
        self.feature_info = [
            dict(num_chs=chs, reduction=2 ** (i + 1), module=f"layers.{end}")
            for i, (chs, end) in enumerate(zip((c64, c64, c128, c128), STAGE_ENDS))
        ]
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """arcface_torch initialisation: Kaiming-normal (fan_out) convs and linears, BN2d (1, 0)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_forwards(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The runs of ``layers`` that end at each of :data:`STAGE_ENDS`."""
        starts = (0, *(end + 1 for end in STAGE_ENDS[:-1]))
        return [partial(self._run_layers, a, b + 1) for a, b in zip(starts, STAGE_ENDS)]

    def _run_layers(self, start: int, stop: int, x: torch.Tensor) -> torch.Tensor:
        for layer in islice(self.layers, start, stop):  # a ModuleList slice builds a new module per call
            x = layer(x)
        return x

    def forward_tail(self, x: torch.Tensor) -> torch.Tensor:
        """``conv_sep`` in float32 (arcface_torch runs only ``layers`` under fp16 autocast)."""
        return self.conv_sep(x.float() if self.fp16 else x)

    def forward_head_impl(self, x: torch.Tensor) -> torch.Tensor:
        """The GDC head ``features``."""
        return self.features(x)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last requested stage and (``prune_head``) ``features``.

        ``conv_sep`` goes with the last stage. ``prune_norm`` is part of timm's
        signature; there is no post-body norm outside the head.

        Returns:
            The absolute indices kept.
        """
        take_indices, max_index = self.pruned_stage_indices(indices, prune_head)
        if max_index < len(STAGE_ENDS) - 1:
            self.layers = self.layers[: STAGE_ENDS[max_index] + 1]
            self.conv_sep = nn.Identity()
        if prune_head:
            self.features = nn.Identity()
        return take_indices


default_cfgs = generate_default_cfgs({"mobilefacenet": face_pretrained_cfg("layers.0.layers.0")})


@register_model
def mobilefacenet(pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet (arcface_torch ``mbf``: ``blocks=(1, 4, 6, 2)``, ``scale=2``, 512-d).

    The insightface MS1M model converted from MXNet is
    ``mobilefacenet(num_features=128, scale=1)``.
    """
    return build_model_with_cfg(
        MobileFaceNet,
        "mobilefacenet",
        pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )
