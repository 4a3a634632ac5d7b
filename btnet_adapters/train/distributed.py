"""Process groups for torchrun, differentiable collectives and global batch norm.

Nothing here runs at import time. :func:`setup` reads torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) and starts NCCL on CUDA or gloo on CPU; without it a run is
a single process and every collective is a no-op.

Model-internal collectives (global batch norm, the sharded classifier) use their own process
group, so their order can never interleave with DDP's asynchronous gradient all-reduces.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs: ``rank`` of ``world`` processes on ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: object | None = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op in a single process)."""
        if self.distributed:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any of them."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA (this process's GPU) when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but CUDA is not available; use device='cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {name!r}; accepted: auto, cpu, cuda")


_MODEL_GROUPS: dict[str, object] = {}


def _model_group(backend: str) -> object:
    """The process group of model-internal collectives (created once per process)."""
    if backend not in _MODEL_GROUPS:
        _MODEL_GROUPS[backend] = dist.new_group(backend=backend)
    return _MODEL_GROUPS[backend]


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    _MODEL_GROUPS.clear()


@contextmanager
def setup(device: str = "auto", timeout_minutes: float = 120.0) -> Iterator[DistEnv]:
    """Join torchrun's process group for a run (or run as one process).

    NCCL is used when the device is CUDA, gloo otherwise. The group is started on first use
    and kept until the process exits, so several runs in one process (e.g. φ_mm's models)
    share it; a group started by the caller is used as it is.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1 and not dist.is_initialized():
        yield DistEnv(device=dev)
        return
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
        atexit.register(_shutdown)
    world, rank = dist.get_world_size(), dist.get_rank()
    group = _model_group(backend) if world > 1 else None
    yield DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev, group=group)


# ---------------------------------------------------------------------- autograd collectives
class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: object) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, env: DistEnv, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.env, ctx.scale, ctx.rows = env, scale, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(env.world)]
        dist.all_gather(parts, x.contiguous(), group=env.group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, group=ctx.env.group)
        start = ctx.env.rank * ctx.rows
        return g[start:start + ctx.rows] * ctx.scale, None, None


def all_reduce_sum(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over processes; the gradient is summed too (every process's loss depends on it)."""
    return _AllReduceSum.apply(x, env.group) if env.distributed else x


def gather_rows(x: torch.Tensor, env: DistEnv, grad_scale: float = 1.0) -> torch.Tensor:
    """Concatenate equal-sized per-process batches in rank order (differentiable).

    The gradient that reaches this process's rows is the sum of every process's gradient,
    times ``grad_scale`` (the world size when DDP averages the gradients afterwards).
    """
    return _GatherRows.apply(x, env, grad_scale) if env.distributed else x


def gather_uneven_rows(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate per-process tensors whose first dimension may differ (no gradient)."""
    if not env.distributed:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(env.world)]
    dist.all_gather(sizes, n, group=env.group)
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros((top, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(env.world)]
    dist.all_gather(parts, padded, group=env.group)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def shard_range(total: int, env: DistEnv) -> tuple[int, int]:
    """Rows ``[start, end)`` of ``total`` owned by this process (contiguous, as Partial FC)."""
    base, extra = divmod(total, env.world)
    start = env.rank * base + min(env.rank, extra)
    return start, start + base + (1 if env.rank < extra else 0)


# ---------------------------------------------------------------------- global batch norm
class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the batches of every process.

    Works with gloo on CPU (``nn.SyncBatchNorm`` needs a GPU) and NCCL; mean and variance are
    two-pass, in float32. Parameter and buffer names equal ``nn.BatchNorm*d``'s.
    """

    group: object | None = None

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.group is not None and dist.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        env = DistEnv(world=dist.get_world_size(), group=self.group)
        xf = x.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float32, device=x.device)
        dist.all_reduce(count, group=self.group)
        mean = all_reduce_sum(xf.sum(dims), env) / count
        centred = xf - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dims), env) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach().to(self.running_var.dtype), alpha=m)
        return out.to(x.dtype)


_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@contextmanager
def global_batch_norms(root: nn.Module, env: DistEnv) -> Iterator[list[str]]:
    """Swap every plain ``nn.BatchNorm*d`` under ``root`` for a :class:`GlobalBatchNorm` sharing
    its parameters and buffers; yields the names of norm layers left per-process (subclasses
    such as timm's ``BatchNormAct2d``). Restores the originals on exit. A root with fixed branch
    paths (``BTNet.rebuild_paths``) has them rebuilt after each exchange, so branch calls run the
    modules now in the tree."""
    undo: list[tuple[nn.Module, str, nn.Module]] = []
    skipped: list[str] = []
    if env.distributed:
        for parent_name, parent in list(root.named_modules()):
            for name, child in list(parent._modules.items()):
                if child is None or not isinstance(child, nn.modules.batchnorm._BatchNorm):
                    continue
                if type(child) not in _PLAIN_BN:
                    skipped.append(f"{parent_name}.{name}".lstrip("."))
                    continue
                parent._modules[name] = _as_global(child, env.group)
                undo.append((parent, name, child))
    rebuild = getattr(root, "rebuild_paths", None) if undo else None
    if rebuild is not None:
        rebuild()
    try:
        yield skipped
    finally:
        for parent, name, child in reversed(undo):
            parent._modules[name] = child
        if rebuild is not None:
            rebuild()


def _as_global(bn: nn.modules.batchnorm._BatchNorm, group: object) -> GlobalBatchNorm:
    new = GlobalBatchNorm.__new__(GlobalBatchNorm)
    nn.Module.__init__(new)
    for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
        setattr(new, attr, getattr(bn, attr))
    new._parameters, new._buffers = bn._parameters, bn._buffers
    new.training = bn.training
    new.group = group
    return new


# ---------------------------------------------------------------------- gradient clipping
def clip_grad_norm(replicated: Iterable[torch.Tensor], sharded: Iterable[torch.Tensor],
                   max_norm: float, env: DistEnv) -> torch.Tensor:
    """Clip the total norm of the gradients of all processes together.

    ``replicated`` parameters hold the same (already averaged) gradient on every process;
    ``sharded`` ones hold this process's part of a parameter split across processes.
    Returns the total norm before clipping.
    """
    rep = [p.grad for p in replicated if p.grad is not None]
    own = [p.grad for p in sharded if p.grad is not None]
    device = (rep or own)[0].device if (rep or own) else env.device
    total = torch.zeros((), dtype=torch.float32, device=device)
    for g in rep:
        total = total + g.detach().float().pow(2).sum()
    part = torch.zeros((), dtype=torch.float32, device=device)
    for g in own:
        part = part + g.detach().float().pow(2).sum()
    if env.distributed and own:
        dist.all_reduce(part, group=env.group)
    norm = (total + part).sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in rep + own:
        g.detach().mul_(coef.to(g.dtype))
    return norm
