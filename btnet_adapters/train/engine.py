"""The optimisation loop shared by trunk and branch runs.

A :class:`Task` says what a batch costs (the loss parts) and which tensors make the run's
state; :func:`run_loop` does the rest: the optimiser (SGD with momentum, or AdamW) with weight
decay, the warm-up + polynomial schedule, AMP, gradient-norm clipping across processes, seeded
resumable data order, progress and JSONL log, checkpoints every N steps and on SIGINT/SIGTERM,
and resume.

Bit-identical resume on one device holds because everything that shapes the next step is in
the checkpoint or a pure function of the step: model and head tensors (batch-norm statistics
and CurricularFace's ``t`` included), the optimiser's state (momentum buffers, AdamW's
moments and step counts), the global RNG state, the AMP scaler;
the learning rate and the data order are functions of the step and the seed, the
augmentation of ``(seed, epoch, index)``.
"""

from __future__ import annotations

import inspect
import logging
import math
import signal
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, prefixed, save_checkpoint, split
from .config import RunConfig
from .distributed import DistEnv, clip_grad_norm, gather_uneven_rows
from .monitor import RunMonitor, plot_losses
from .partial_fc import ShardedMarginHead
from .sampler import EpochBatchSampler, steps_per_epoch
from .schedule import learning_rate

logger = logging.getLogger(__name__)
_DDP_ARGS = frozenset(inspect.signature(DistributedDataParallel.__init__).parameters)

TRAIN_CONFIG = "train_config.json"
LOG = "log.jsonl"
PLOT = "loss.png"
CHECKPOINTS = "checkpoints"


class Task(ABC):
    """One kind of run. ``head`` is the (possibly frozen) sharded margin head, ``None`` when the
    run uses no classifier (label-free branch training)."""

    head: ShardedMarginHead | None

    @abstractmethod
    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The replicated trainable parameters, by stable name (the head's block excluded)."""

    @abstractmethod
    def losses(self, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Loss parts of one batch; ``"loss"`` is the total that is minimised."""

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Full (world-size independent) tensors that, with the optimiser, make the run's state."""

    @abstractmethod
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_tensors`."""


@dataclass
class LoopResult:
    """How a loop ended."""

    step: int
    total_steps: int
    steps_per_epoch: int
    interrupted: bool = False
    signal: int | None = None
    checkpoint: Path | None = None
    last: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a run did and wrote.

    Attributes:
        kind: ``"trunk"`` or ``"branch"``.
        out: the run folder.
        step: the last completed step.
        total_steps: steps of the whole schedule.
        interrupted: stopped by SIGINT/SIGTERM (resume with ``resume=True``).
        signal: the signal number when interrupted.
        files: what was written, by role (``model``, ``adapter``, ``checkpoint``, ``log``, ...).
        last: the last log record (losses, lr, images/s).
    """

    kind: str
    out: Path
    step: int
    total_steps: int
    interrupted: bool
    signal: int | None
    files: dict[str, Path]
    last: dict[str, Any]

    def summary(self) -> str:
        """A short human-readable account of the run."""
        state = (f"interrupted by {signal.Signals(self.signal).name} at step {self.step}/{self.total_steps}; "
                 "continue with --resume" if self.interrupted else f"finished at step {self.step}/{self.total_steps}")
        losses = ", ".join(f"{k} {v:.4g}" for k, v in self.last.items() if k.startswith("loss"))
        lines = [f"{self.kind} run {state}" + (f" ({losses})" if losses else "")]
        width = max((len(k) for k in self.files), default=0)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in self.files.items()]
        return "\n".join(lines)


class ModelPath(nn.Module):
    """One forward path of a BTNet as a module DDP can wrap: the trunk (embeddings), or
    branch ``resolution`` (embeddings and implant features)."""

    def __init__(self, model: nn.Module, resolution: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> Any:
        if self.resolution is None:
            return self.model.forward_trunk(x)
        return self.model.forward_with_implant(x, self.resolution)


def freeze_unused(module: nn.Module, probe: Callable[[], torch.Tensor]) -> list[str]:
    """Freeze the trainable parameters of ``module`` that ``probe()`` (a scalar built from the
    outputs the loss uses) does not reach, e.g. a backbone's own head norm when BTNet's
    embedding head replaces it. Runs in eval mode (no statistics move); returns their names.

    DDP needs every trainable parameter to get a gradient each step; frozen they also stay
    out of weight decay.
    """
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        probe().backward()
    finally:
        for m, flag in flags.items():
            m.training = flag
    unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in module.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    if unused:
        logger.info("%d parameters are not on the trained path and stay frozen (e.g. %s)", len(unused), unused[:3])
    return unused


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """``module`` in DistributedDataParallel when several processes run (as is otherwise)."""
    if not env.distributed:
        return module
    ids = [env.device.index] if env.device.type == "cuda" else None
    # Buffers are synchronised once at construction; afterwards each process keeps its own
    # (global batch norm keeps them equal anyway). torch >= 2.14 renamed the switch.
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS
               else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=ids, **no_sync)


def place(model: nn.Module, env: DistEnv, config: RunConfig) -> None:
    """Move ``model`` to the run's device (and memory format)."""
    model.to(env.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)


def make_optimizer(config: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser ``config.optimizer`` names: SGD (``momentum``, ``weight_decay``) or AdamW
    (betas ``(momentum, 0.999)``, decoupled ``weight_decay``)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=(config.momentum, 0.999),
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def amp_settings(mode: str, device: torch.device) -> tuple[bool, torch.dtype]:
    """``(enabled, dtype)`` of autocast for an ``amp`` setting on ``device``."""
    if mode == "auto":
        return (True, torch.float16) if device.type == "cuda" else (False, torch.float32)
    if mode == "off":
        return False, torch.float32
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("amp='fp16' needs CUDA; use amp='bf16' or 'off' on CPU")
    return True, torch.float16 if mode == "fp16" else torch.bfloat16


class StopSignals:
    """Turn the first SIGINT/SIGTERM into a request to checkpoint and stop (main thread only);
    a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        logger.warning("received %s: finishing this step, writing a checkpoint, then stopping",
                       signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def prepare_run_dir(config: RunConfig, env: DistEnv) -> Path:
    """Create ``config.out`` and record the configuration; refuse to mix runs.

    Raises:
        ConfigError: ``out`` holds checkpoints and ``resume`` is off, or ``resume`` is on and
            the recorded configuration differs (fields named).
    """
    out = Path(config.out)
    saved_path = out / TRAIN_CONFIG
    found = list_checkpoints(out / CHECKPOINTS)
    if saved_path.is_file() and config.resume:
        saved = type(config).load(saved_path)
        diffs = saved.differences(config)
        if diffs:
            lines = "; ".join(f"{k}: {a!r} (saved) vs {b!r} (given)" for k, a, b in
                              ((k, *v) for k, v in diffs.items()))
            raise ConfigError(f"{out} holds a run with another configuration, it cannot be resumed "
                              f"with this one: {lines}")
    elif found and not config.resume:
        raise ConfigError(f"{out} already holds a run (checkpoint at step {found[-1][0]}); pass "
                          "resume=True (--resume) to continue it, or choose another out folder")
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(saved_path)
    env.barrier()
    return out


def run_loop(task: Task, dataset: Dataset, config: RunConfig, env: DistEnv, out: Path,
             desc: str = "train") -> LoopResult:
    """Train ``task`` on ``dataset`` as ``config`` says; returns where it stopped."""
    named = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
    sharded = [task.head.weight] if task.head is not None and task.head.weight.requires_grad else []
    if not named and not sharded:
        raise ConfigError("nothing to train: every parameter is frozen")
    optimizer = make_optimizer(config, [p for _, p in named] + sharded)
    per_epoch = steps_per_epoch(len(dataset), config.batch_size, env.world)  # type: ignore[arg-type]
    total = max(1, math.ceil(config.epochs * per_epoch))
    warmup = min(round(config.warmup_epochs * per_epoch), total)
    stop = min(total, config.max_steps) if config.max_steps else total
    amp, dtype = amp_settings(config.amp, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp and dtype == torch.float16)
    state = _State(task, optimizer, scaler, named, env, config)

    start = 0
    ckpt_dir = out / CHECKPOINTS
    if config.resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            logger.warning("resume requested but %s holds no checkpoint: starting from step 0", ckpt_dir)
        else:
            start = state.restore(path)
    result = LoopResult(step=start, total_steps=total, steps_per_epoch=per_epoch)
    if start >= stop:
        return result

    sampler = EpochBatchSampler(len(dataset), config.batch_size, config.seed, start, stop,  # type: ignore[arg-type]
                                env.rank, env.world)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.workers,
                        pin_memory=env.device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    monitor = RunMonitor(out / LOG, stop, start, enabled=env.is_main, progress=config.progress, desc=desc)
    sums: dict[str, torch.Tensor] = {}
    count, step, norm = 0, start, torch.zeros(())
    global_batch = config.batch_size * env.world
    try:
        with StopSignals() as signals:
            for batch in loader:
                batch = [_to_device(b, env.device, config.channels_last) for b in batch]
                lr = learning_rate(step, base_lr=config.lr, total_steps=total, warmup_steps=warmup,
                                   power=config.lr_power)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(env.device.type, dtype=dtype, enabled=amp):
                    parts = task.losses(batch, step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(parts["loss"]).backward()
                scaler.unscale_(optimizer)
                if config.clip_grad_norm:
                    norm = clip_grad_norm([p for _, p in named], sharded, config.clip_grad_norm, env)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0) + value.detach().float()
                count += 1
                monitor.advance(global_batch)
                if step % config.log_every == 0 or step == stop:
                    losses = {k: float(v) / count for k, v in sums.items()}
                    if not scaler.is_enabled() and not all(math.isfinite(v) for v in losses.values()):
                        raise FloatingPointError(f"the loss is not finite at step {step} ({losses}); lower lr "
                                                 f"(now {lr:.4g}) or check the data")
                    result.last = monitor.log(step, step / per_epoch, lr, losses, grad_norm=float(norm))
                    sums, count = {}, 0
                stopping = env.any(signals.received is not None)
                if stopping or step % config.checkpoint_every == 0 or step == stop:
                    result.checkpoint = state.save(ckpt_dir, step, total)
                if stopping:
                    result.interrupted, result.signal = True, signals.received
                    break
    finally:
        monitor.close()
    result.step = step
    return result


def run_files(out: Path, checkpoint: Path | None) -> dict[str, Path]:
    """The log, the loss plot (drawn now) and the last checkpoint of a run, by role."""
    files: dict[str, Path] = {"log": out / LOG}
    plot = plot_losses(out / LOG, out / PLOT, title=f"{out.name}: training loss")
    if plot is not None:
        files["plot"] = plot
    if checkpoint is not None:
        files["checkpoint"] = checkpoint
    return files


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


class _State:
    """Collects and restores everything a checkpoint holds."""

    def __init__(self, task: Task, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 named: list[tuple[str, nn.Parameter]], env: DistEnv, config: RunConfig) -> None:
        self.task, self.optimizer, self.scaler, self.named, self.env, self.config = (
            task, optimizer, scaler, named, env, config)

    def _optimizer_state(self) -> dict[str, torch.Tensor]:
        """Per-parameter optimiser state by stable name: SGD's ``momentum.<param>`` (the format of
        earlier checkpoints), AdamW's ``optim.<key>.<param>``; the sharded classifier's gathered."""
        out: dict[str, torch.Tensor] = {}
        head = self.task.head
        params = list(self.named)
        if head is not None and head.weight.requires_grad:
            params.append(("classifier.weight", head.weight))
        for name, p in params:
            for key, value in self.optimizer.state.get(p, {}).items():
                if not torch.is_tensor(value):
                    continue
                if name == "classifier.weight" and value.ndim > 0:  # a per-row tensor: all ranks' rows
                    value = head.gather(value)
                out[_state_name(key, name)] = value
        return out

    def save(self, folder: Path, step: int, total: int) -> Path | None:
        env = self.env
        tensors = prefixed(self.task.state_tensors(), "state")
        tensors.update(self._optimizer_state())
        rng = gather_uneven_rows(torch.get_rng_state()[None].to(env.device), env).cpu()
        tensors.update({f"rng.cpu.{r}": rng[r] for r in range(env.world)})
        if env.device.type == "cuda":
            cuda = gather_uneven_rows(torch.cuda.get_rng_state(env.device)[None].to(env.device), env).cpu()
            tensors.update({f"rng.cuda.{r}": cuda[r] for r in range(env.world)})
        meta = {"config": self.config.to_dict(), "world": env.world, "total_steps": total,
                "scaler": self.scaler.state_dict()}
        path = None
        if env.is_main:
            path = save_checkpoint(folder, step, tensors, meta, keep=self.config.keep_checkpoints)
        env.barrier()
        return path

    def restore(self, path: Path) -> int:
        tensors, meta = load_checkpoint(path)
        saved = type(self.config).from_dict(meta["config"])
        diffs = saved.differences(self.config)
        if diffs:
            raise ConfigError(f"checkpoint {path} comes from another configuration: {sorted(diffs)} differ")
        before, now = saved.batch_size * int(meta["world"]), self.config.batch_size * self.env.world
        if before != now:
            raise ConfigError(f"checkpoint {path} was written with a global batch of {before} "
                              f"({saved.batch_size} × {meta['world']} processes); this run has {now} "
                              f"({self.config.batch_size} × {self.env.world}); choose batch_size so that "
                              f"batch_size × processes = {before}")
        self.task.load_state_tensors(split(tensors, "state"))
        self._restore_optimizer(tensors, path)
        step = int(meta["step"])
        if int(meta["world"]) == self.env.world:
            torch.set_rng_state(tensors[f"rng.cpu.{self.env.rank}"])
            if self.env.device.type == "cuda" and f"rng.cuda.{self.env.rank}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{self.env.rank}"], self.env.device)
        else:
            torch.manual_seed(self.config.seed * 1_000_003 + step * 101 + self.env.rank)
        if self.scaler.is_enabled() and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        logger.info("resumed from %s (step %d)", path, step)
        return step

    def _restore_optimizer(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        head = self.task.head
        params = dict(self.named)
        if head is not None and head.weight.requires_grad:
            params["classifier.weight"] = head.weight
        found: dict[str, dict[str, torch.Tensor]] = {}
        for full, value in tensors.items():
            parsed = _parse_state_name(full)
            if parsed is not None:
                key, name = parsed
                found.setdefault(name, {})[key] = value
        expected = {n for n, _ in self.named} if self._stateful() else set()
        if set(found) - {"classifier.weight"} != expected:
            raise ConfigError(f"checkpoint {path} does not match this model's trainable parameters")
        for name, state in found.items():
            p = params.get(name)
            if p is None:  # a classifier trained then, frozen now
                continue
            for key, value in state.items():
                if name == "classifier.weight" and value.ndim > 0:  # this rank's rows
                    value = head.local(value)
                # step counts stay on the CPU (as torch keeps them); moments follow the parameter
                state[key] = value if value.ndim == 0 else value.to(p.device, p.dtype)
            self.optimizer.state[p] = state

    def _stateful(self) -> bool:
        """Whether the optimiser keeps per-parameter state (SGD without momentum does not)."""
        return self.config.optimizer == "adamw" or self.config.momentum > 0


def _state_name(key: str, param: str) -> str:
    return f"momentum.{param}" if key == "momentum_buffer" else f"optim.{key}.{param}"


def _parse_state_name(full: str) -> tuple[str, str] | None:
    if full.startswith("momentum."):
        return "momentum_buffer", full[len("momentum."):]
    if full.startswith("optim."):
        key, _, name = full[len("optim."):].partition(".")
        return key, name
    return None
