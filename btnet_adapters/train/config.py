"""Typed run configurations, saved as JSON with every run and loadable back.

:class:`TrunkConfig` trains a trunk (and its margin head); :class:`BranchConfig` trains one
branch against a frozen trunk and classifier (the BTNet recipe). Both share the optimisation,
data and checkpoint settings of :class:`RunConfig`. Defaults follow the reference
(``DESIGN.md`` §1): SGD momentum 0.9, weight decay 5e-4, polynomial decay of power 2 after a
linear warm-up, gradient-norm clip 5, AMP on CUDA.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..data import BRANCH_DEGRADATION, PRESETS, TRUNK_DEGRADATION, CorruptPolicy, DegradationSpec
from .._atomic import write_text_atomic
from ..errors import ConfigError, OverlappingPathsError
from ..heads import HEADS

CONFIG_VERSION = 1
AMP_MODES = ("auto", "off", "fp16", "bf16")
OPTIMIZERS = ("sgd", "adamw")
EMBEDDING_LOSSES = ("mse", "cosine")
MULTIRES = ("hr", *sorted(PRESETS), "mm")
#: Fields that may change when a run is resumed (they do not change what is computed).
#: ``batch_size`` is per process: a resumed run must keep the *global* batch
#: (``batch_size × world size``), which the checkpoint checks.
RUNTIME_FIELDS = frozenset({"max_steps", "workers", "checkpoint_every", "keep_checkpoints",
                            "log_every", "device", "progress", "resume", "batch_size"})
_NESTED = {"degradation": DegradationSpec, "corrupt": CorruptPolicy}
#: Fields added after configuration version 1: written only when they differ from their default, so
#: that saved configurations and the stage keys of earlier runs (``btnet reproduce``) stay the same.
LATER_FIELDS = frozenset({"optimizer", "embedding_loss", "init_from", "specific", "unlabeled"})


@dataclass
class RunConfig:
    """Settings shared by trunk and branch runs.

    Args:
        data: training images: identity folders, a ``path<TAB>identity`` list or a RecordIO
            ``.rec`` (or a folder holding ``train.rec`` + ``train.idx``).
        out: run folder (configuration, checkpoints, log, plot, results); it must not be,
            contain or lie inside an input (data, trunk, weights, classifier).
        data_root: folder the paths of a TSV list are relative to (default: its folder).
        epochs: passes over the data; the learning-rate schedule spans them.
        max_steps: stop after this many optimiser steps (a short run of the same schedule).
        batch_size: images per process and step (global batch = ``batch_size × world size``).
        lr: peak learning rate.
        optimizer: ``"sgd"`` (with momentum, the reference's) or ``"adamw"`` (Adam with decoupled
            weight decay; ``momentum`` is its first beta).
        momentum: SGD momentum (AdamW: beta 1).
        weight_decay: weight decay (AdamW: decoupled).
        warmup_epochs: linear warm-up length in epochs.
        lr_power: power of the polynomial decay after the warm-up.
        clip_grad_norm: clip the total gradient norm to this value (``None``: no clipping).
        amp: ``"auto"`` (float16 autocast on CUDA, off on CPU), ``"off"``, ``"fp16"``, ``"bf16"``.
        seed: seed of the model initialisation, data order and augmentation.
        workers: DataLoader worker processes.
        flip: random horizontal flips.
        degradation: how images are brought to a lower resolution: a JSON object of
            ``DegradationSpec`` fields, or a preset name (``paper``, ``realistic``).
        channels_last: model and images in channels-last memory format (faster convolutions
            on CPU, and on GPU with AMP).
        sync_bn: with several processes, batch-norm statistics are computed over the global
            batch (so N processes train like one); ``False`` keeps per-process statistics like
            arcface_torch (faster on many GPUs).
        checkpoint_every: write a checkpoint every this many steps (and on SIGINT/SIGTERM).
        keep_checkpoints: how many recent checkpoints to keep.
        log_every: log line (JSONL and progress bar) every this many steps.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        corrupt: policy for unreadable images.
        progress: show tqdm progress bars.
        resume: continue from the latest checkpoint in ``out``.
    """

    kind: ClassVar[str] = "run"

    #: Fields that name files or folders the run reads: ``out`` must not overlap them.
    INPUT_FIELDS: ClassVar[tuple[str, ...]] = ("data",)

    data: str = ""
    out: str = ""
    data_root: str | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    lr_power: float = 2.0
    clip_grad_norm: float | None = 5.0
    amp: str = "auto"
    seed: int = 0
    workers: int = 4
    flip: bool = True
    degradation: DegradationSpec = TRUNK_DEGRADATION
    channels_last: bool = False
    sync_bn: bool = True
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    device: str = "auto"
    corrupt: CorruptPolicy = field(default_factory=CorruptPolicy)
    progress: bool = True
    resume: bool = False

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid value."""
        if not self.data:
            raise ConfigError("data is required: an image folder, a .tsv list or a .rec file")
        if not self.out:
            raise ConfigError("out is required: the run folder")
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size, integer=True)
        _positive("lr", self.lr)
        _positive("checkpoint_every", self.checkpoint_every, integer=True)
        _positive("keep_checkpoints", self.keep_checkpoints, integer=True)
        _positive("log_every", self.log_every, integer=True)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps, integer=True)
        for name in ("momentum", "weight_decay", "warmup_epochs", "lr_power"):
            _non_negative(name, getattr(self, name))
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs}); set "
                              f"warmup_epochs (--warmup-epochs) to at most {self.epochs}")
        if self.clip_grad_norm is not None:
            _positive("clip_grad_norm", self.clip_grad_norm)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; accepted: {OPTIMIZERS}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"unknown amp mode {self.amp!r}; accepted: {AMP_MODES}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {self.device!r}; accepted: auto, cpu, cuda")
        if self.amp == "fp16" and (self.device == "cpu" or not torch.cuda.is_available()):
            raise ConfigError("amp='fp16' needs CUDA; use amp='bf16' or 'off' on CPU")
        _non_negative("seed", self.seed, integer=True)
        _non_negative("workers", self.workers, integer=True)
        for name, cls in _NESTED.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        check_separate(self.out, {name: getattr(self, name) for name in self.INPUT_FIELDS})

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form with ``type`` and ``version`` fields (fields of
        :data:`LATER_FIELDS` only when they are not at their default)."""
        out: dict[str, Any] = {"type": self.kind, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in LATER_FIELDS and value == f.default:
                continue
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Inverse of :meth:`to_dict`; unknown keys and another run type are errors."""
        data = dict(data)
        kind, version = data.pop("type", cls.kind), data.pop("version", CONFIG_VERSION)
        if kind != cls.kind:
            raise ConfigError(f"this is a {kind!r} configuration, not a {cls.kind!r} one")
        if int(version) > CONFIG_VERSION:
            raise ConfigError(f"configuration version {version} is newer than this library's {CONFIG_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.kind} configuration keys {unknown}; accepted: {sorted(names)}")
        for name, nested in _NESTED.items():
            if isinstance(data.get(name), dict):
                data[name] = nested.from_dict(data[name])
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the configuration as JSON (atomically) and return the path."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "RunConfig":
        """Read a configuration written by :meth:`save`."""
        return cls.from_dict(_read_json(path))

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def differences(self, other: "RunConfig") -> dict[str, tuple[Any, Any]]:
        """Fields (outside :data:`RUNTIME_FIELDS`) whose values differ: ``name -> (self, other)``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
                if k not in RUNTIME_FIELDS and a.get(k) != b.get(k)}


@dataclass
class TrunkConfig(RunConfig):
    """A trunk run (φ_hr, φ_mr v1–v3 or one φ_mm model).

    Args:
        model: a timm / ``btnet_*`` model name (e.g. ``btnet_iresnet50``).
        model_kwargs: extra model arguments (JSON), e.g. ``{"embed_dim": 128}``.
        init_weights: optional safetensors file to start from (``trunk.*`` / ``head.*`` keys,
            or the backbone's own keys).
        margin: margin head (:data:`btnet_adapters.heads.HEADS`), CurricularFace by default.
        margin_kwargs: the head's hyper-parameters (``scale``, ``margin``, ...).
        multires: ``"hr"`` (112 only), ``"v1"``/``"v2"``/``"v3"`` (mixed resolutions
            up-sampled back, φ_mr) or ``"mm"`` (images at one ``resolution``, φ_mm).
        resolution: the resolution of a ``"mm"`` run.
        sample_rate: Partial FC negative-class sampling rate (1.0: every class).

    Defaults are the reference's (lr 0.2 for a global batch of 512, 25 epochs, 2 warm-up). On the
    command line a default warm-up longer than ``--epochs`` shrinks to the same share of the run
    (:func:`fit_default_warmup`); an explicit one must fit.
    """

    kind: ClassVar[str] = "trunk"
    INPUT_FIELDS: ClassVar[tuple[str, ...]] = ("data", "init_weights")

    model: str = "btnet_iresnet50"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None
    margin: str = "curricularface"
    margin_kwargs: dict[str, Any] = field(default_factory=dict)
    multires: str = "hr"
    resolution: int | None = None
    sample_rate: float = 1.0
    epochs: float = 25.0
    lr: float = 0.2
    warmup_epochs: float = 2.0

    def validate(self) -> None:
        super().validate()
        if self.margin not in HEADS:
            raise ConfigError(f"unknown margin head {self.margin!r}; accepted: {tuple(HEADS)}")
        if self.multires not in MULTIRES:
            raise ConfigError(f"unknown multires setting {self.multires!r}; accepted: {MULTIRES}")
        if (self.multires == "mm") != (self.resolution is not None):
            raise ConfigError("multires='mm' needs a resolution (and only 'mm' takes one)")
        if self.resolution is not None:
            _positive("resolution", self.resolution, integer=True)
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if "resolutions" in self.model_kwargs or "num_classes" in self.model_kwargs:
            raise ConfigError("model_kwargs must not set resolutions or num_classes: a trunk run "
                              "builds no branches and takes its classes from the data")


@dataclass
class BranchConfig(RunConfig):
    """A branch run: resolution ``r`` distilled from the frozen trunk (BTNet §3.3).

    Args:
        resolution: the branch resolution (a level of the trunk's feature pyramid).
        trunk: a trunk run folder or saved model (``config.json`` + ``model.safetensors``).
        model: for an imported trunk: the model name (e.g. ``btnet_mobilefacenet``) ...
        model_kwargs: ... its arguments ...
        trunk_weights: ... and a safetensors file with the trunk's weights (the backbone's
            own keys, or ``trunk.*`` / ``head.*`` keys).
        classifier: a classifier fitted earlier (``classifier.safetensors`` of a run); when
            the trunk has none and this is ``None`` one is fitted first (:func:`fit_classifier`).
        margin: margin head of a fitted classifier.
        margin_kwargs: its hyper-parameters.
        fit_epochs: passes over the cached embeddings when fitting a classifier.
        fit_lr: learning rate of the classifier fit.
        cls_weight: weight of the margin-softmax loss on the frozen classifier.
        distill_weight: λ, the weight of the distillation terms (0.5).
        feature_weight: weight of the implant-feature MSE inside λ (1).
        embedding_weight: weight of the embedding distillation inside λ (1; the paper's variant: 0).
        embedding_loss: how student and teacher embeddings are compared: ``"mse"`` on the raw
            embeddings (the reference's) or ``"cosine"`` (1 − cosine similarity, the quantity
            verification scores, insensitive to the embedding's norm).
        init_from: an adapter folder (``adapters/r<k>`` of a trained branch of this trunk) whose
            tensors of the same names and shapes initialise the branch, e.g. the 7-px branch
            from a trained 14-px one; the others keep the trunk's weights.
        specific: which modules the branch owns (``None``: the model's rule, ``"reference"`` —
            every module before the implant point; ``"all"``: its own copy of every module, the
            layers after the implant too; or a list of module names).
        unlabeled: ``data`` is any folder of aligned faces (sub-folders are searched, names are
            not identities): pure distillation from the trunk, no classifier (``cls_weight``
            must be 0).
        update_head_stats: let the frozen margin head update its running statistics (e.g.
            CurricularFace's ``t``), as the reference does; by default it is frozen entirely.

    Defaults: lr 0.02, 10 epochs, no warm-up, non-antialiased tensor bilinear down-sampling.
    """

    kind: ClassVar[str] = "branch"
    INPUT_FIELDS: ClassVar[tuple[str, ...]] = ("data", "trunk", "trunk_weights", "classifier", "init_from")

    resolution: int = 14
    trunk: str | None = None
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    trunk_weights: str | None = None
    classifier: str | None = None
    margin: str = "curricularface"
    margin_kwargs: dict[str, Any] = field(default_factory=dict)
    fit_epochs: int = 3
    fit_lr: float = 0.1
    cls_weight: float = 1.0
    distill_weight: float = 0.5
    feature_weight: float = 1.0
    embedding_weight: float = 1.0
    embedding_loss: str = "mse"
    init_from: str | None = None
    specific: str | list[str] | None = None
    unlabeled: bool = False
    update_head_stats: bool = False
    epochs: float = 10.0
    lr: float = 0.02
    warmup_epochs: float = 0.0
    degradation: DegradationSpec = BRANCH_DEGRADATION

    def validate(self) -> None:
        super().validate()
        _positive("resolution", self.resolution, integer=True)
        if (self.trunk is None) == (self.model is None):
            raise ConfigError("give either trunk (a trunk run / saved model folder) or model + "
                              "trunk_weights (an imported trunk), not both")
        if self.model is not None and self.trunk_weights is None:
            raise ConfigError(f"model={self.model!r} needs trunk_weights (a safetensors file)")
        if self.margin not in HEADS:
            raise ConfigError(f"unknown margin head {self.margin!r}; accepted: {tuple(HEADS)}")
        _non_negative("fit_epochs", self.fit_epochs, integer=True)
        _positive("fit_lr", self.fit_lr)
        for name in ("cls_weight", "distill_weight", "feature_weight", "embedding_weight"):
            _non_negative(name, getattr(self, name))
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise ConfigError(f"unknown embedding_loss {self.embedding_loss!r}; accepted: {EMBEDDING_LOSSES}")
        if self.specific is not None and not isinstance(self.specific, str) and not (
                isinstance(self.specific, list) and all(isinstance(n, str) for n in self.specific)):
            raise ConfigError(f"specific must be a rule name ('reference', 'all', 'none') or a list of module names, "
                              f"got {self.specific!r}")
        if self.unlabeled and self.cls_weight != 0:
            raise ConfigError("unlabeled data has no identities for the classifier loss: set cls_weight to 0 "
                              "(--cls-weight 0; `btnet train branch --unlabeled DIR` does)")
        if self.unlabeled and self.classifier is not None:
            raise ConfigError("unlabeled training uses no classifier: drop classifier")
        if self.cls_weight == 0 and self.distill_weight * (self.feature_weight + self.embedding_weight) == 0:
            raise ConfigError("every loss weight is zero: nothing would train the branch")
        if self.degradation.upsample:
            raise ConfigError("branch inputs stay at the branch resolution: degradation.upsample must be False")


CONFIG_TYPES: dict[str, type[RunConfig]] = {"trunk": TrunkConfig, "branch": BranchConfig}


def fit_default_warmup(config: RunConfig, *, explicit: bool) -> tuple[RunConfig, str | None]:
    """Shrink a *default* warm-up that is longer than the run (e.g. ``btnet train trunk --epochs 1``
    with the reference's 2 warm-up epochs of 25).

    When the user did not choose ``warmup_epochs`` (``explicit`` is False), it still has its class
    default and that exceeds ``epochs``, the warm-up becomes the same share of the run as the
    default schedule's (``epochs × default warm-up / default epochs``: 2/25 = 8 % for a trunk), so
    a learning-rate decay still follows. An explicit warm-up is left as it is (:meth:`RunConfig.validate`
    refuses one that does not fit).

    Returns:
        ``(config, note)``: the (possibly changed) configuration, and a sentence for the log saying
        what was changed (``None`` when nothing was).
    """
    defaults = type(config)()
    epochs, warmup = config.epochs, config.warmup_epochs
    if (explicit or isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not math.isfinite(epochs)
            or epochs <= 0 or warmup != defaults.warmup_epochs or warmup <= epochs):
        return config, None
    fitted = epochs * defaults.warmup_epochs / defaults.epochs
    note = (f"warmup_epochs: the default warm-up of {warmup:g} epochs exceeds --epochs {epochs:g}; using "
            f"{fitted:g} epochs ({100 * defaults.warmup_epochs / defaults.epochs:g} % of the run, as the default "
            f"schedule's {defaults.warmup_epochs:g} of {defaults.epochs:g}). Set --warmup-epochs to choose another.")
    return config.replace(warmup_epochs=fitted), note


def load_config(path: str | os.PathLike[str]) -> TrunkConfig | BranchConfig:
    """Read a saved configuration of either type (by its ``type`` field)."""
    data = _read_json(path)
    kind = data.get("type")
    if kind not in CONFIG_TYPES:
        raise ConfigError(f"{path}: unknown configuration type {kind!r}; accepted: {sorted(CONFIG_TYPES)}")
    return CONFIG_TYPES[kind].from_dict(data)  # type: ignore[return-value]


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"configuration file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{p} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object")
    return data


def _positive(name: str, value: Any, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def _non_negative(name: str, value: Any, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a non-negative {'integer' if integer else 'number'}, got {value!r}")


def check_separate(out: str, inputs: dict[str, str | None]) -> None:
    """Refuse a run folder ``out`` that is, lies inside or contains one of the ``inputs``
    (``field name -> path``): writing the run there would replace or delete what the input
    holds, e.g. the other adapters of a saved model given as the trunk. Symlinks are resolved.

    Raises:
        OverlappingPathsError: naming both paths.
    """
    if not out:
        return
    real_out = Path(os.path.realpath(Path(out).expanduser()))
    for name, value in inputs.items():
        if not value:
            continue
        real_in = Path(os.path.realpath(Path(value).expanduser()))
        if real_out == real_in:
            how = "is the same path as"
        elif real_out.is_relative_to(real_in):
            how = "lies inside"
        elif real_in.is_relative_to(real_out):
            how = "contains"
        else:
            continue
        raise OverlappingPathsError(
            f"the run folder out={out!r} {how} the input {name}={value!r}: the run writes its checkpoints, "
            f"configuration and results there and could replace or delete what {name} holds; "
            "choose an out folder outside it (e.g. a new folder next to it)")
