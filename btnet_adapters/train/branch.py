"""Branch training, the BTNet recipe (paper §3.3).

For resolution ``r``: the trunk and its classifier are frozen (backward-compatible training),
so are the layers the branch shares with the trunk; only ``model.branch_parameters(r)`` train
(the branch's specific layers and its own copy of every norm layer, whose running statistics
update). Each batch is seen twice:

- **teacher**: the trunk on the trunk-size image, in eval mode and without gradient (its
  batch-norm statistics never move), giving the embedding and the features at the implant
  point;
- **student**: the branch path on the same image resized to ``r`` (train mode).

Loss = ``cls_weight`` · margin-CE(student embedding, frozen classifier)
+ ``distill_weight`` · [``feature_weight`` · MSE(implant features)
+ ``embedding_weight`` · D(embeddings)], D = MSE of the raw embeddings (the reference's) or
1 − cosine similarity (``embedding_loss="cosine"``). With ``cls_weight`` 0 no classifier is
fitted or used (pure distillation); with ``unlabeled`` the data have no identities either.

The result is an adapter: only the tensors of ``r`` plus a config referencing the trunk.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import hub
from ..data import FaceDataset, FaceSource, PairedFaceDataset, open_source, read_class_index, write_class_index
from ..errors import ConfigError, ResolutionError
from ..heads import MarginHead
from ..model import BTNet
from .artifacts import (CLASSES, load_classifier, load_trunk_folder, load_trunk_weights, save_adapter_folder,
                        save_classifier, trunk_info)
from .checkpoint import prefixed, split
from .classifier import fit_classifier
from .config import BranchConfig
from .distributed import DistEnv, global_batch_norms, setup
from .engine import ModelPath, Task, TrainResult, freeze_unused, place, prepare_run_dir, run_files, run_loop, wrap_ddp
from .partial_fc import ShardedMarginHead
from .trunk import build_model

logger = logging.getLogger(__name__)


class BranchTask(Task):
    """Distillation of branch ``resolution`` from the frozen trunk (and the margin loss on the frozen
    classifier when ``head`` is given)."""

    def __init__(self, model: BTNet, resolution: int, head: ShardedMarginHead | None, env: DistEnv,
                 config: BranchConfig) -> None:
        self.model, self.resolution, self.head, self.config = model, resolution, head, config
        model.requires_grad_(False)
        for p in model.branch_parameters(resolution):
            p.requires_grad_(True)
        if head is not None:
            head.requires_grad_(False)
        use_emb = config.cls_weight > 0 or config.distill_weight * config.embedding_weight > 0
        use_feat = config.distill_weight * config.feature_weight > 0

        def probe() -> torch.Tensor:
            emb, feat = model.forward_with_implant(torch.randn(2, 3, resolution, resolution, device=env.device),
                                                   resolution)
            return sum(([emb.sum()] if use_emb else []) + ([feat.sum()] if use_feat else []))

        freeze_unused(model, probe)
        self.net = wrap_ddp(ModelPath(model, resolution), env)

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def losses(self, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        teacher_x, student_x, labels = batch
        cfg = self.config
        self.model.eval()
        with torch.no_grad():
            t_emb, t_feat = self.model.forward_with_implant(teacher_x, self.resolution)
        self.model.train()
        if self.head is not None:
            self.head.train(cfg.update_head_stats)
        s_emb, s_feat = self.net(student_x)
        # The classifier term first, as before label-free runs existed: the autograd graph (and so
        # the summation order of the gradients) of labelled runs stays what it was.
        cls = self.head(s_emb.float(), labels, step) if self.head is not None else None
        feat = F.mse_loss(s_feat.float(), t_feat.float())
        if cfg.embedding_loss == "cosine":
            emb = 1.0 - F.cosine_similarity(s_emb.float(), t_emb.float(), dim=1).mean()
        else:
            emb = F.mse_loss(s_emb.float(), t_emb.float())
        distill = cfg.distill_weight * (cfg.feature_weight * feat + cfg.embedding_weight * emb)
        parts = {"loss_feat": feat.detach(), "loss_emb": emb.detach()}
        if cls is None:
            return {"loss": distill, **parts}
        return {"loss": cfg.cls_weight * cls + distill, "loss_cls": cls.detach(), **parts}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        head = dict(self.head.head.named_buffers()) if self.head is not None else {}
        return {**prefixed(self.model.branch_state_dict(self.resolution), "branch"), **prefixed(head, "classifier")}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_branch_state_dict(self.resolution, split(tensors, "branch"), strict=True)
        if self.head is None:  # a run without classifier loss has no use for its state
            return
        for name, value in split(tensors, "classifier").items():
            self.head.head.get_buffer(name).copy_(value)


#: The classifier a branch run fits for a trunk imported without one.
FITTED_CLASSIFIER = "classifier.safetensors"


def _check_inputs(config: BranchConfig) -> None:
    """Files the run needs, before any compute."""
    if config.trunk is not None:
        root = Path(config.trunk)
        for name in (hub.CONFIG_NAME, hub.WEIGHTS_NAME):
            if not (root / name).is_file():
                raise ConfigError(f"trunk {root} is not a saved model: {name} is missing (expected the out "
                                  "folder of a trunk run or a save_pretrained folder; for an imported trunk "
                                  "give model + trunk_weights)")
    if config.trunk_weights is not None and not Path(config.trunk_weights).is_file():
        raise ConfigError(f"trunk_weights not found: {config.trunk_weights}")
    if config.classifier is not None and not Path(config.classifier).is_file():
        raise ConfigError(f"classifier not found: {config.classifier}")


def _known_classes(config: BranchConfig) -> tuple[dict[str, int] | None, int | None]:
    """The identity → label mapping and class count the classifier was trained with, if known."""
    if config.classifier is not None:
        folder = Path(config.classifier).parent
        count = None
    elif config.trunk is not None:
        folder = Path(config.trunk)
        count = trunk_info(folder)["num_classes"] or None
    else:
        return None, None
    classes = read_class_index(folder / CLASSES) if (folder / CLASSES).is_file() else None
    return classes, count


def load_trunk(config: BranchConfig) -> tuple[BTNet, MarginHead | None]:
    """The frozen trunk (without classifier and branches) and its classifier (``None`` if it
    has none and ``config.classifier`` names none)."""
    if config.trunk is not None:
        model, classifier, _ = load_trunk_folder(config.trunk)
    else:
        model = build_model(str(config.model), config.model_kwargs)
        load_trunk_weights(model, str(config.trunk_weights))
        classifier = None
    if config.classifier is not None:
        classifier = load_classifier(config.classifier)
    return model, classifier


def init_branch_from(model: BTNet, resolution: int, folder: str | Path) -> list[str]:
    """Copy into branch ``resolution`` the tensors of the adapter in ``folder`` (a trained branch
    of the same trunk, fingerprint checked) that have the same names and shapes; returns their
    names. E.g. a 7-px branch starts from a trained 14-px one: the layers both run without
    down-sampling share names, the 7-px branch's extra ones keep the trunk's weights. The
    adapter is loaded as a branch for the copy and removed again (a branch of its resolution
    already in ``model`` would be replaced: call this on a model being trained)."""
    existing = set(model.branches)
    source = hub.load_adapter(model, folder)
    try:
        if source == resolution:
            raise ConfigError(f"init_from {folder} is an adapter of the same resolution {resolution}; "
                              "to continue a run use resume")
        theirs, ours = model.branch_state_dict(source), model.branch_state_dict(resolution)
        shared = {k: v.clone() for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
        model.load_branch_state_dict(resolution, shared, strict=False)
    finally:
        if str(source) not in existing:
            model.remove_branch(source)
        elif source == resolution:
            reset_branch(model, resolution)
    logger.info("branch %d initialised from the %d-px adapter %s: %d of %d tensors", resolution, source, folder,
                len(shared), len(ours))
    return sorted(shared)


def reset_branch(model: BTNet, resolution: int, specific: str | Sequence[str] | None = None) -> None:
    """(Re)build branch ``resolution`` from the trunk's current weights (``specific``: the
    modules it owns, as :meth:`BTNet.add_branch` takes it)."""
    available = sorted(s for s in model.pyramid if s < model.input_size)
    if resolution not in available:
        raise ResolutionError(f"the trunk has no feature-pyramid level of side {resolution} at input "
                              f"{model.input_size}; branch resolutions available: {available}")
    if str(resolution) in model.branches:
        model.remove_branch(resolution)
    model.add_branch(resolution, specific=specific)


def train_branch(config: BranchConfig) -> TrainResult:
    """Train the branch of ``config.resolution`` (under torchrun: on every process).

    When the trunk has no classifier, one is first fitted on the training data with the trunk
    frozen (:func:`btnet_adapters.train.fit_classifier`) and written to the run folder
    (``classifier.safetensors`` + ``classes.json``), where a resumed run finds it again.

    Returns:
        The :class:`TrainResult`; ``files["adapter"]`` is the adapter folder.
    """
    config.validate()
    _check_inputs(config)
    with setup(config.device) as env:
        out = prepare_run_dir(config, env)
        classes, count = (None, None) if config.unlabeled else _known_classes(config)
        source = open_source(config.data, root=config.data_root, class_to_idx=classes, num_classes=count,
                             unlabeled=config.unlabeled)
        torch.manual_seed(config.seed)
        model, classifier = load_trunk(config)
        reset_branch(model, config.resolution, config.specific)
        if config.init_from is not None:
            init_branch_from(model, config.resolution, config.init_from)
        if classifier is not None and classifier.num_classes < source.num_classes:
            raise ConfigError(f"the data has {source.num_classes} identities but the classifier only "
                              f"{classifier.num_classes}")
        place(model, env, config)
        head = None  # pure distillation (cls_weight 0, e.g. label-free) needs no classifier
        if config.cls_weight > 0:
            if classifier is None:
                classifier = _fitted_classifier(model, source, config, env, out)
            head = ShardedMarginHead(classifier, env, seed=config.seed).to(env.device)
        dataset = PairedFaceDataset(source, config.resolution, size=model.input_size, flip=config.flip,
                                    degradation=config.degradation, seed=config.seed, corrupt=config.corrupt)
        sync = global_batch_norms(model, env) if config.sync_bn else contextlib.nullcontext([])
        with sync:
            task = BranchTask(model, config.resolution, head, env, config)
            loop = run_loop(task, dataset, config, env, out, desc=f"branch r{config.resolution}")
        files: dict[str, Path] = {}
        if env.is_main:
            if not loop.interrupted:
                model.cpu()
                files["adapter"] = save_adapter_folder(model, config.resolution, out)
            if (out / FITTED_CLASSIFIER).is_file():
                files["classifier"] = out / FITTED_CLASSIFIER
            files.update(run_files(out, loop.checkpoint))
        return TrainResult("branch", out, loop.step, loop.total_steps, loop.interrupted, loop.signal, files, loop.last)


def _fitted_classifier(model: BTNet, source: FaceSource, config: BranchConfig, env: DistEnv,
                       out: Path) -> MarginHead:
    """Fit (main process) or reuse (resume) the classifier of a trunk imported without one."""
    path = out / FITTED_CLASSIFIER
    if not path.is_file() and env.is_main:
        logger.info("the trunk has no classifier: fitting one on %d images (%d identities), trunk frozen",
                    len(source), source.num_classes)
        data = FaceDataset(source, size=model.input_size, flip=config.flip, seed=config.seed, corrupt=config.corrupt)
        head = fit_classifier(model, data, source.num_classes, margin=config.margin,
                              margin_kwargs=config.margin_kwargs, epochs=config.fit_epochs, lr=config.fit_lr,
                              batch_size=config.batch_size, seed=config.seed, workers=config.workers,
                              device=env.device, progress=config.progress)
        save_classifier(head, path)
        write_class_index(out / CLASSES, source.class_to_idx)
    env.barrier()
    classifier = load_classifier(path)
    if classifier.num_classes < source.num_classes:
        raise ConfigError(f"{path} has {classifier.num_classes} classes but the data {source.num_classes}; "
                          "it belongs to another dataset (delete it to fit a new one)")
    return classifier
