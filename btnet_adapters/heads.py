"""Margin-based classification heads for face recognition training.

Each head holds one class centre per identity (``weight``, shape ``(num_classes,
embed_dim)``), takes *raw* embeddings and integer labels, L2-normalises both itself and
returns logits already multiplied by the scale ``s``, ready for ``F.cross_entropy``.

Heads follow the original code: CurricularFace (HuangYG123/CurricularFace), ArcFace and
CosFace (insightface ``arcface_torch``), AdaFace (mk-minchul/AdaFace).

Labels of ``-1`` follow insightface's Partial FC convention (a sample whose class lives on
another shard): its row gets no margin, no modulation and does not update running
statistics of the target logits; its logits are the plain scaled cosines. Use
``F.cross_entropy(..., ignore_index=-1)`` to skip such rows in the loss.

Logits are computed in at least float32 (half-precision inputs are up-cast).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, InputImageError

__all__ = [
    "HEADS",
    "AdaFace",
    "ArcFace",
    "CosFace",
    "CurricularFace",
    "MarginHead",
    "create_head",
]


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def _arc_margin(target: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Additive angular margin on target cosines.

    Returns ``cos(theta + m)`` and the target logit with the standard fallback: where
    ``theta + m > pi`` (``cos theta <= cos(pi - m)``) use ``cos theta - sin(pi - m) * m``.
    """
    # clamp_min(0) changes no value but gives a zero (not infinite) gradient at cos = +-1.
    sin = torch.sqrt((1.0 - target * target).clamp_min(0.0))
    cos_m = target * math.cos(margin) - sin * math.sin(margin)
    threshold = math.cos(math.pi - margin)
    fallback = target - math.sin(math.pi - margin) * margin
    return cos_m, torch.where(target > threshold, cos_m, fallback)


class MarginHead(nn.Module, ABC):
    """Base class: class centres, input checks, cosine logits and scaling.

    Subclasses implement :meth:`margin_logits` on the cosine matrix.

    Args:
        embed_dim: embedding size.
        num_classes: number of identities.
        scale: logit scale ``s``.
        margin: margin ``m``.
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        _check_range("scale", scale, 1e-6, math.inf)
        _check_range("margin", margin, 0.0, math.pi / 2)
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.scale = float(scale)
        self.margin = float(margin)
        # Same initialisation as insightface Partial FC.
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embed_dim)))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, "
            f"scale={self.scale}, margin={self.margin}"
        )

    def _check_inputs(self, embeddings: Tensor, labels: Tensor) -> None:
        if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point() or embeddings.ndim != 2:
            raise InputImageError(
                f"embeddings must be a float tensor of shape (N, {self.embed_dim}), got {_describe(embeddings)}"
            )
        if embeddings.shape[1] != self.embed_dim:
            raise InputImageError(
                f"embedding dim mismatch: head expects {self.embed_dim}, got shape {tuple(embeddings.shape)}"
            )
        if not isinstance(labels, Tensor) or labels.dtype not in _INT_DTYPES:
            raise InputImageError(f"labels must be an integer tensor, got {_describe(labels)}")
        if labels.shape != (embeddings.shape[0],):
            raise InputImageError(
                f"labels must have shape ({embeddings.shape[0]},) to match the embeddings, got {tuple(labels.shape)}"
            )
        if labels.numel() and bool(((labels < -1) | (labels >= self.num_classes)).any()):
            raise InputImageError(
                f"labels must be in [0, {self.num_classes}) or -1 (class on another shard), "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled margin logits.

        Args:
            embeddings: raw embeddings, shape ``(N, embed_dim)``.
            labels: class indices, shape ``(N,)``, in ``[0, num_classes)`` or ``-1``.

        Returns:
            Logits of shape ``(N, num_classes)``, already multiplied by ``scale``.

        Raises:
            InputImageError: wrong shapes, dtypes or label values.
        """
        self._check_inputs(embeddings, labels)
        cos = F.linear(F.normalize(embeddings.to(self.weight.dtype)), F.normalize(self.weight))
        cos = cos.to(torch.promote_types(cos.dtype, torch.float32)).clamp(-1.0, 1.0)
        rows = torch.nonzero(labels != -1).squeeze(1)
        return self.margin_logits(cos, rows, labels[rows].long(), embeddings) * self.scale

    @abstractmethod
    def margin_logits(self, cos: Tensor, rows: Tensor, cols: Tensor, embeddings: Tensor) -> Tensor:
        """Unscaled logits from cosines ``(N, C)``; ``(rows, cols)`` index the labelled targets."""


class CurricularFace(MarginHead):
    """CurricularFace (Huang et al., CVPR 2020), the BTNet trunk loss.

    Target: ``cos(theta + m)`` with the ArcFace fallback. Non-target cosines larger than
    the target's ``cos(theta + m)`` (hard examples) become ``cos * (t + cos)``, where
    ``t`` is a running mean of the target cosines, updated in training mode before the
    modulation as ``t = momentum * mean + (1 - momentum) * t`` (a buffer, so it is saved
    in ``state_dict``).

    Args:
        embed_dim: embedding size.
        num_classes: number of identities.
        scale: logit scale ``s`` (64).
        margin: angular margin ``m`` (0.5).
        momentum: update rate of ``t`` (0.01).
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 momentum: float = 0.01) -> None:
        super().__init__(embed_dim, num_classes, scale, margin)
        _check_range("momentum", momentum, 0.0, 1.0)
        self.momentum = float(momentum)
        self.register_buffer("t", torch.zeros(1))

    def margin_logits(self, cos: Tensor, rows: Tensor, cols: Tensor, embeddings: Tensor) -> Tensor:
        target = cos[rows, cols]
        cos_m, final = _arc_margin(target, self.margin)
        if self.training and rows.numel():
            with torch.no_grad():
                self.t.mul_(1.0 - self.momentum).add_(self.momentum * target.mean())
        sub = cos[rows]
        t = self.t.to(sub.dtype)
        sub = torch.where(sub > cos_m.unsqueeze(1), sub * (t + sub), sub)
        return cos.index_put((rows,), sub).index_put((rows, cols), final)


class ArcFace(MarginHead):
    """ArcFace (Deng et al., CVPR 2019): target logit ``cos(theta + m)``.

    With ``easy_margin=False`` (default, as insightface) targets with ``theta + m > pi``
    use ``cos theta - sin(pi - m) * m``; with ``easy_margin=True`` targets with
    ``cos theta <= 0`` keep ``cos theta``.

    Args:
        embed_dim: embedding size.
        num_classes: number of identities.
        scale: logit scale ``s`` (64).
        margin: angular margin ``m`` (0.5).
        easy_margin: use the easy-margin rule instead of the fallback.
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 easy_margin: bool = False) -> None:
        super().__init__(embed_dim, num_classes, scale, margin)
        self.easy_margin = bool(easy_margin)

    def margin_logits(self, cos: Tensor, rows: Tensor, cols: Tensor, embeddings: Tensor) -> Tensor:
        target = cos[rows, cols]
        cos_m, final = _arc_margin(target, self.margin)
        if self.easy_margin:
            final = torch.where(target > 0, cos_m, target)
        return cos.index_put((rows, cols), final)


class CosFace(MarginHead):
    """CosFace (Wang et al., CVPR 2018): target logit ``cos theta - m``.

    Args:
        embed_dim: embedding size.
        num_classes: number of identities.
        scale: logit scale ``s`` (64).
        margin: additive cosine margin ``m`` (0.4).
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.4) -> None:
        super().__init__(embed_dim, num_classes, scale, margin)

    def margin_logits(self, cos: Tensor, rows: Tensor, cols: Tensor, embeddings: Tensor) -> Tensor:
        return cos.index_put((rows, cols), cos[rows, cols] - self.margin)


class AdaFace(MarginHead):
    """AdaFace (Kim et al., CVPR 2022): margin adapted to image quality (feature norm).

    With ``z = clip((norm - mean) / (std + 1e-3) * h, -1, 1)`` per sample, the target
    angle becomes ``clip(theta - m * z, 1e-3, pi - 1e-3)`` and ``m + m * z`` is then
    subtracted from its cosine. All cosines are first clipped to ``[-1 + 1e-3, 1 - 1e-3]``.
    ``mean``/``std`` are running batch statistics of the (clipped, detached) embedding
    norms, updated in training mode before use with rate ``t_alpha``; they are buffers
    (``batch_mean`` starts at 20, ``batch_std`` at 100). Norms of every row, including
    ``-1`` rows, enter the statistics; training batches need at least 2 samples.

    Args:
        embed_dim: embedding size.
        num_classes: number of identities.
        scale: logit scale ``s`` (64).
        margin: margin ``m`` (0.4).
        h: concentration ``h`` (0.333).
        t_alpha: update rate of the norm statistics (0.01).
    """

    eps = 1e-3

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.4,
                 h: float = 0.333, t_alpha: float = 0.01) -> None:
        super().__init__(embed_dim, num_classes, scale, margin)
        _check_range("h", h, 0.0, math.inf)
        _check_range("t_alpha", t_alpha, 0.0, 1.0)
        self.h = float(h)
        self.t_alpha = float(t_alpha)
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def margin_logits(self, cos: Tensor, rows: Tensor, cols: Tensor, embeddings: Tensor) -> Tensor:
        cos = cos.clamp(-1.0 + self.eps, 1.0 - self.eps)
        norms = embeddings.detach().norm(dim=1).clamp(0.001, 100.0).to(cos.dtype)
        if self.training:
            if norms.numel() < 2:
                raise InputImageError("AdaFace needs at least 2 embeddings per training batch (norm std)")
            with torch.no_grad():
                self.batch_mean.mul_(1.0 - self.t_alpha).add_(self.t_alpha * norms.mean())
                self.batch_std.mul_(1.0 - self.t_alpha).add_(self.t_alpha * norms.std())
        mean, std = self.batch_mean.to(cos.dtype), self.batch_std.to(cos.dtype)
        scaler = ((norms[rows] - mean) / (std + self.eps) * self.h).clamp(-1.0, 1.0)
        theta = cos[rows, cols].acos()
        theta_m = (theta - self.margin * scaler).clamp(self.eps, math.pi - self.eps)
        final = theta_m.cos() - (self.margin + self.margin * scaler)
        return cos.index_put((rows, cols), final)


_HEADS: dict[str, type[MarginHead]] = {
    "curricularface": CurricularFace,
    "arcface": ArcFace,
    "cosface": CosFace,
    "adaface": AdaFace,
}
HEADS = MappingProxyType(_HEADS)
"""Head name -> class; the first entry (``curricularface``) is the default."""


def create_head(name: str, embed_dim: int, num_classes: int, **kwargs: float | bool) -> MarginHead:
    """Build a margin head by name.

    Args:
        name: one of :data:`HEADS` (``curricularface``, ``arcface``, ``cosface``, ``adaface``).
        embed_dim: embedding size.
        num_classes: number of identities.
        **kwargs: the head's own hyper-parameters (e.g. ``scale``, ``margin``, ``momentum``).

    Returns:
        The head module.

    Raises:
        ConfigError: unknown head name, unknown keyword, or out-of-range value.
    """
    if name not in _HEADS:
        raise ConfigError(f"unknown head {name!r}; accepted: {', '.join(_HEADS)}")
    cls = _HEADS[name]
    fixed = ("self", "embed_dim", "num_classes")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in fixed]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"head {name!r} does not accept {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    return cls(embed_dim, num_classes, **kwargs)
