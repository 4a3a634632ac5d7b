"""Model-parallel margin softmax (insightface Partial FC) for any head of :mod:`..heads`.

Each process holds a contiguous block of class centres. Embeddings of the global batch are
gathered, every process scores them against its own centres, and the softmax
cross-entropy is computed across processes without ever materialising the full logit
matrix, so millions of identities fit.

Margin heads need each sample's *target* cosine even where the target class lives on
another process (CurricularFace re-weights hard negatives relative to it, and updates its
running ``t`` from it). The target cosines are summed across processes, appended as an
extra column and passed to the head's ``margin_logits`` as every row's target; the result
is identical to the single-process head. Optional class sampling keeps, per process, the
classes present in the batch plus random others (``sample_rate`` of the block).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, InputImageError
from ..heads import HEADS, MarginHead, create_head
from .distributed import DistEnv, all_reduce_sum, gather_rows, gather_uneven_rows, shard_range


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over logits split by columns across processes."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,  # type: ignore[override]
                group: object | None) -> torch.Tensor:
        top = logits.detach().max(dim=1).values
        if group is not None:
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        exp = (logits.detach() - top[:, None]).exp()
        total = exp.sum(dim=1)
        target = torch.zeros_like(top)
        target[rows] = logits.detach()[rows, cols]
        if group is not None:
            dist.all_reduce(total, group=group)
            dist.all_reduce(target, group=group)
        ctx.save_for_backward(exp / total[:, None], rows, cols)
        return (total.log() + top - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        prob, rows, cols = ctx.saved_tensors
        out = prob.clone()
        out[rows, cols] -= 1.0
        return out * (grad / prob.shape[0]), None, None, None


def head_name(head: MarginHead) -> str:
    """The :data:`~btnet_adapters.heads.HEADS` name of a margin head."""
    for name, cls in HEADS.items():
        if type(head) is cls:
            return name
    raise ConfigError(f"{type(head).__name__} is not a head of btnet_adapters.heads ({tuple(HEADS)})")


def head_hyper_parameters(head: MarginHead) -> dict[str, float | bool]:
    """A margin head's constructor arguments besides its size (``scale``, ``margin``, ...)."""
    fixed = ("self", "embed_dim", "num_classes")
    return {p: getattr(head, p) for p in inspect.signature(type(head).__init__).parameters if p not in fixed}


class ShardedMarginHead(nn.Module):
    """This process's block of a margin head's class centres, and the sharded loss.

    Args:
        head: the full head (e.g. ``model.classifier``); its block of rows and its buffers
            are copied.
        env: the process group (one process holds every class).
        sample_rate: fraction of this block's classes scored per step (Partial FC sampling;
            1.0 scores all). Classes present in the batch are always kept.
        seed: seed of the sampling (a function of ``seed``, step and rank).

    Attributes:
        start, end: the rows ``[start, end)`` of the full head held here.
    """

    def __init__(self, head: MarginHead, env: DistEnv, sample_rate: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(head, MarginHead):
            raise InputImageError(f"head must be a MarginHead, got {type(head).__name__}")
        self.env = env
        self.num_classes = head.num_classes
        self.start, self.end = shard_range(head.num_classes, env)
        if self.end <= self.start:
            raise InputImageError(f"{head.num_classes} classes cannot be split over {env.world} processes")
        self.name = head_name(head)
        self.head = create_head(self.name, head.embed_dim, self.end - self.start, **head_hyper_parameters(head))
        self.load_full_state_dict(head.state_dict())
        self.head.train(head.training)
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)

    @property
    def weight(self) -> nn.Parameter:
        """This process's class centres, rows ``start..end-1`` of the full head."""
        return self.head.weight

    # ------------------------------------------------------------------ forward
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Mean margin-softmax cross-entropy of the global batch.

        Args:
            embeddings: this process's raw embeddings ``(b, D)``; every process passes ``b`` rows.
            labels: their class indices ``(b,)`` in ``[0, num_classes)``.
            step: the optimiser step (seeds the class sampling).
        """
        if labels.numel() and bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise InputImageError(f"labels must be in [0, {self.num_classes}), got values in "
                                  f"[{int(labels.min())}, {int(labels.max())}]")
        emb = gather_rows(embeddings, self.env, grad_scale=float(self.env.world))
        labels = gather_rows(labels.to(emb.device), self.env)
        weight, index = self.weight, None
        if self.sample_rate < 1.0 and self.training and weight.requires_grad:
            index = self._sample(labels, step)
            weight = weight[index]
        cos = F.linear(F.normalize(emb.to(weight.dtype)), F.normalize(weight))
        cos = cos.to(torch.promote_types(cos.dtype, torch.float32)).clamp(-1.0, 1.0)
        rows = torch.nonzero((labels >= self.start) & (labels < self.end)).squeeze(1)
        cols = labels[rows] - self.start
        if index is not None:
            cols = torch.searchsorted(index, cols)
        target = torch.zeros(cos.shape[0], dtype=cos.dtype, device=cos.device).index_put((rows,), cos[rows, cols])
        target = all_reduce_sum(target, self.env)
        extra = cos.shape[1]
        every = torch.arange(cos.shape[0], device=cos.device)
        logits = self.head.margin_logits(torch.cat([cos, target[:, None]], dim=1), every,
                                         torch.full_like(every, extra), emb) * self.head.scale
        own = logits[:, :extra].index_put((rows, cols), logits[rows, extra])
        return _ShardedCrossEntropy.apply(own, rows, cols, self.env.group if self.env.distributed else None)

    def _sample(self, labels: torch.Tensor, step: int) -> torch.Tensor:
        size = self.end - self.start
        keep = max(1, math.ceil(self.sample_rate * size))
        gen = torch.Generator().manual_seed(hash((self.seed, int(step), self.env.rank)) % (2 ** 63))
        score = torch.rand(size, generator=gen).to(labels.device)
        mine = labels[(labels >= self.start) & (labels < self.end)] - self.start
        score[mine] = 2.0
        keep = max(keep, int(mine.unique().numel()))
        return score.topk(keep).indices.sort().values

    # ------------------------------------------------------------------ state
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full head's tensors (rows of every process gathered; same on every process)."""
        out = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        out["weight"] = gather_uneven_rows(self.weight.detach(), self.env)
        return out

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full head's tensors (from any number of processes) and keep this block."""
        if state["weight"].shape[0] != self.num_classes:
            raise InputImageError(f"classifier has {state['weight'].shape[0]} classes, expected {self.num_classes}")
        own = dict(state)
        own["weight"] = state["weight"][self.start:self.end]
        self.head.load_state_dict(own, strict=True)

    def gather(self, shard: torch.Tensor) -> torch.Tensor:
        """Full rows of a per-block tensor shaped like :attr:`weight` (e.g. its momentum)."""
        return gather_uneven_rows(shard, self.env)

    def local(self, full: torch.Tensor) -> torch.Tensor:
        """This process's rows of a full tensor shaped like the full head's weight."""
        return full[self.start:self.end]

    def to_margin_head(self) -> MarginHead:
        """A single full :class:`MarginHead` with the gathered centres and buffers."""
        state = self.full_state_dict()
        head = create_head(self.name, self.head.embed_dim, self.num_classes, **head_hyper_parameters(self.head))
        head.load_state_dict(state, strict=True)
        return head
