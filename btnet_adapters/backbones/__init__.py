"""Face recognition backbones of insightface ``arcface_torch`` as timm models.

Importing this package registers ``iresnet18``, ``iresnet34``, ``iresnet50``,
``iresnet100``, ``iresnet200`` and ``mobilefacenet`` with timm, so
``timm.create_model(name)`` works; parameter names match arcface_torch, so its
checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from btnet_adapters.backbones.iresnet import (
    FaceEmbeddingNet,
    IBasicBlock,
    IResNet,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    iresnet200,
)
from btnet_adapters.backbones.mobilefacenet import MobileFaceNet, mobilefacenet

__all__ = [
    "FaceEmbeddingNet",
    "IBasicBlock",
    "IResNet",
    "MobileFaceNet",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
    "mobilefacenet",
]
