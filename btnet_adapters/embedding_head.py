"""The embedding head BTNet puts on a trunk's final feature map (arcface_torch's)."""

from __future__ import annotations

import torch
import torch.nn as nn


class EmbeddingHead(nn.Module):
    """arcface_torch's embedding head: BN2d → dropout → flatten → linear → BN1d (``"fc"``),
    or global average pooling → linear → BN1d (``"pool"``)."""

    def __init__(self, kind: str, channels: int, side: int, embed_dim: int,
                 drop_rate: float = 0.0, channels_last: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.channels_last = channels_last
        self.bn = nn.BatchNorm2d(channels, eps=1e-5) if kind == "fc" else nn.Identity()
        self.dropout = nn.Dropout(drop_rate)
        in_features = channels * side * side if kind == "fc" else channels
        self.fc = nn.Linear(in_features, embed_dim)
        self.features = nn.BatchNorm1d(embed_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = self.bn(x)
        x = torch.flatten(x, 1) if self.kind == "fc" else x.mean((2, 3))
        return self.features(self.fc(self.dropout(x)))
