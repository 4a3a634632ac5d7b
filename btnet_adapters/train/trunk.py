"""Trunk training: a BTNet trunk and its margin head (φ_hr, φ_mr v1–v3, φ_mm).

The trunk is trained without branches (they are built later from its final weights) with a
margin head, CurricularFace by default, sharded across processes. The run folder ends up a
saved model (:func:`btnet_adapters.hub.save_pretrained`: ``config.json``,
``model.safetensors``, ``classifier.safetensors``) plus ``classes.json``; ``train_branch``
takes it as ``trunk`` (and the head's hyper-parameters from its ``train_config.json``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch

from ..data import FaceDataset, ResolutionSampler, open_source
from ..errors import ConfigError
from ..heads import create_head
from ..model import BTNet
from ..zoo import ZOO
from .artifacts import load_trunk_weights, save_trunk_folder
from .checkpoint import prefixed, split
from .config import TrunkConfig
from .distributed import DistEnv, global_batch_norms, setup
from .engine import ModelPath, Task, TrainResult, freeze_unused, place, prepare_run_dir, run_files, run_loop, wrap_ddp
from .partial_fc import ShardedMarginHead

logger = logging.getLogger(__name__)


def build_model(name: str, kwargs: dict[str, Any], *, num_classes: int = 0, margin: str = "curricularface",
                margin_kwargs: dict[str, Any] | None = None) -> BTNet:
    """A BTNet without branches: a registered ``btnet_*`` name, or any timm backbone name.

    ``kwargs`` are BTNet / entry-point arguments (``embed_dim``, ``backbone_kwargs``, ...).
    """
    args = {k: v for k, v in kwargs.items() if k != "resolutions"}
    args.update(resolutions=[], num_classes=0)
    try:
        model = timm.create_model(name, **args) if name in ZOO else BTNet(name, **args)
    except TypeError as err:
        raise ConfigError(f"model arguments {sorted(kwargs)} are not accepted by {name!r}: {err}") from None
    if num_classes:
        model.reset_classifier(num_classes, margin)
        if margin_kwargs:
            model.classifier = create_head(margin, model.embed_dim, num_classes, **margin_kwargs)
    return model


def resolution_sampler(config: TrunkConfig) -> ResolutionSampler | None:
    """The training resolutions of a trunk run (``None``: every image at the trunk size)."""
    if config.multires == "hr":
        return None
    if config.multires == "mm":
        return ResolutionSampler.fixed(int(config.resolution))  # type: ignore[arg-type]
    return ResolutionSampler.preset(config.multires)


class TrunkTask(Task):
    """Margin softmax on the trunk's embeddings; every trunk and head tensor trains."""

    def __init__(self, model: BTNet, head: ShardedMarginHead, env: DistEnv) -> None:
        self.model, self.head = model, head
        side = model.input_size
        freeze_unused(model, lambda: model.forward_trunk(torch.randn(2, 3, side, side, device=env.device)).sum())
        self.net = wrap_ddp(ModelPath(model), env)

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.model.named_parameters())

    def losses(self, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        self.model.train()
        self.head.train()
        loss = self.head(self.net(images).float(), labels, step)
        return {"loss": loss}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**prefixed(self.model.state_dict(), "model"), **prefixed(self.head.full_state_dict(), "classifier")}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(split(tensors, "model"), strict=True)
        self.head.load_full_state_dict(split(tensors, "classifier"))


def train_trunk(config: TrunkConfig) -> TrainResult:
    """Train a trunk as ``config`` says (under torchrun: on every process of the group).

    Returns:
        The :class:`TrainResult`; ``files`` name the model folder files, log, plot and the
        last checkpoint.
    """
    config.validate()
    with setup(config.device) as env:
        out = prepare_run_dir(config, env)
        source = open_source(config.data, root=config.data_root)
        torch.manual_seed(config.seed)
        model = build_model(config.model, config.model_kwargs, num_classes=source.num_classes,
                            margin=config.margin, margin_kwargs=config.margin_kwargs)
        if config.init_weights:
            load_trunk_weights(model, config.init_weights)
        dataset = FaceDataset(source, size=model.input_size, flip=config.flip, resolutions=resolution_sampler(config),
                              degradation=config.degradation, seed=config.seed, corrupt=config.corrupt)
        place(model, env, config)
        classifier, model.classifier = model.classifier, None
        head = ShardedMarginHead(classifier, env, config.sample_rate, config.seed).to(env.device)
        del classifier
        sync = global_batch_norms(model, env) if config.sync_bn else contextlib.nullcontext([])
        with sync as per_process:
            if per_process:
                logger.warning("%d norm layers keep per-process statistics (not plain BatchNorm), e.g. %s",
                               len(per_process), per_process[:3])
            loop = run_loop(TrunkTask(model, head, env), dataset, config, env, out,
                            desc=f"trunk {config.multires}" + (f" r{config.resolution}" if config.resolution else ""))
        model.classifier = head.to_margin_head()
        files: dict[str, Path] = {}
        if env.is_main:
            if not loop.interrupted:
                model.cpu()
                for path in save_trunk_folder(model, out, source.class_to_idx):
                    files[path.name] = path
            files.update(run_files(out, loop.checkpoint))
        return TrainResult("trunk", out, loop.step, loop.total_steps, loop.interrupted, loop.signal, files, loop.last)


def train_independent(config: TrunkConfig, resolutions: Sequence[int]) -> list[TrainResult]:
    """φ_mm: one independent trunk per resolution, each in ``config.out / r<res>``."""
    if not resolutions:
        raise ConfigError("train_independent needs at least one resolution")
    results = []
    for r in resolutions:
        results.append(train_trunk(config.replace(multires="mm", resolution=int(r), out=str(Path(config.out) / f"r{r}"))))
        if results[-1].interrupted:
            break
    return results
