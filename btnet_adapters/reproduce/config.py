"""Settings of a reproduction run (:class:`ReproduceConfig`) and the recipes it starts from.

Two modes:

* **embedded default** (no ``trunk``): everything is trained here — φ_hr, φ_mr (v1), φ_mm
  (one model per branch resolution) and the BTNet branches on the φ_mr trunk — by default on
  the bundled ORL faces with a small ResNet (:data:`ORL_MODEL`, :data:`ORL_TRUNK`,
  :data:`ORL_BRANCH`);
* **given trunk** (``trunk`` = weights file or model folder): φ_hr is that trunk as it is; the
  branches are trained on it by pure distillation (:data:`GIVEN_BRANCH`; with a classifier loss
  in ``branch_options``, a classifier is first fitted on ``train`` when the trunk has none);
  φ_mr and φ_mm are optional fine-tunes of the trunk (:data:`FINETUNE`).

Every training degradation defaults to the verification protocol's resize (OpenCV bilinear,
no antialiasing; torch's bilinear without antialiasing when OpenCV is not installed, equal up
to uint8 rounding) so that no model sees other low-resolution statistics in training than in
evaluation.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.degrade import DEGRADATION_PRESETS, DegradationSpec
from ..errors import ConfigError
from ..resize import CV2_BILINEAR, TORCH_BILINEAR, ResizeSpec
from ..train import BranchConfig, TrunkConfig

#: The embedded default's model: a ResNet with one basic block per stage, a deep 3-conv stem
#: and no max-pool (pyramid 56/28/14/7 at 112), 64-d embeddings; 0.16 GFLOPs per 112 image.
ORL_MODEL: tuple[str, dict[str, Any]] = ("btnet_resnet18", {
    "embed_dim": 64,
    "backbone_kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16,
                        "stem_type": "deep"},
})
#: Trunk recipe of the embedded default (φ_hr, φ_mr, φ_mm), overriding TrunkConfig's defaults.
ORL_TRUNK: dict[str, Any] = {"epochs": 15.0, "batch_size": 32, "lr": 0.1, "warmup_epochs": 1.0}
#: Branch recipe of the embedded default. The distillation weight is larger than the paper's
#: 0.5: in a short run the MSE gradients are ~1 % of the margin loss's and would barely act.
ORL_BRANCH: dict[str, Any] = {"epochs": 8.0, "batch_size": 32, "lr": 0.1, "distill_weight": 20.0}
#: Branch recipe on a given trunk (e.g. insightface's MobileFaceNet on 4k CelebA faces), chosen on a
#: validation split of the training identities (``benchmarks/recipe_study.py``, README "Choosing the
#: branch recipe"): pure distillation — no classifier loss, which pulled the 7-px branch towards 200
#: training identities and cost 6 points on held-out people —, implant features (MSE, weight 3) +
#: embeddings (1 − cosine), AdamW. 6 epochs: the budget of the φ_mr/φ_mm fine-tunes (:data:`FINETUNE`).
GIVEN_BRANCH: dict[str, Any] = {"epochs": 6.0, "batch_size": 32, "optimizer": "adamw", "lr": 0.002,
                                "weight_decay": 0.05, "momentum": 0.9, "embedding_loss": "cosine",
                                "cls_weight": 0.0, "distill_weight": 20.0, "feature_weight": 3.0, "fit_epochs": 3}
#: φ_mr / φ_mm as fine-tunes of a given trunk (a new margin head, low rate, warm-up), as many
#: epochs as the branches get so that the comparison gives every model the same data.
FINETUNE: dict[str, Any] = {"epochs": 6.0, "batch_size": 64, "lr": 0.01, "warmup_epochs": 0.3}
#: Open-set protocol file names looked up in the ``openset`` folder, per role.
OPENSET_FILES: dict[str, tuple[str, ...]] = {
    "gallery": ("openset_gallery.tsv", "gallery.tsv"),
    "mated": ("openset_mated_probes.tsv", "mated_probes.tsv", "mated.tsv"),
    "unmated": ("openset_unmated_probes.tsv", "unmated_probes.tsv", "unmated.tsv"),
}


def default_resize() -> ResizeSpec:
    """The protocol resize: OpenCV bilinear without antialiasing (the reference's verification),
    or torch's bilinear without antialiasing when OpenCV is not installed."""
    return CV2_BILINEAR if importlib.util.find_spec("cv2") is not None else TORCH_BILINEAR


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


#: Recipe fields the pipeline sets itself and option dictionaries must not.
_RESERVED = {"data", "out", "data_root", "resume", "multires", "resolution", "trunk", "model", "model_kwargs",
             "trunk_weights", "init_weights", "classifier"}


@dataclass
class ReproduceConfig:
    """One reproduction of the paper's cross-resolution comparison.

    Args:
        out: output folder (stages, tables, plots); reused to resume.
        train: training images (``path<TAB>identity`` list, identity folders or ``.rec``);
            ``None``: the bundled ORL faces (split and pairs are generated).
        train_root: folder the paths of a ``train`` list are relative to (default: its folder).
        pairs: verification pairs, ``path1 path2 same [fold]`` or LFW's ``pairs.txt`` (required with
            ``train``).
        images: folder the pair and open-set paths are relative to (default: the pair list's folder).
        openset: folder with the open-set lists (``openset_gallery.tsv``,
            ``openset_mated_probes.tsv``, ``openset_unmated_probes.tsv``), optional.
        probe_size: open-set probes are degraded to this side first (so branches matter).
        orl_test_identities: ORL people held out for verification (embedded data only).
        trunk: a trained trunk (weights file or saved model folder); ``None`` trains one.
        model: model name (``None``: :data:`ORL_MODEL` when training, inferred for a given trunk).
        model_kwargs: its arguments.
        resolutions: branch resolutions (levels of the trunk's feature pyramid).
        phi_mr: train φ_mr (``None``: yes when training from scratch, no with a given trunk).
        phi_mm: train φ_mm, one model per resolution (``None``: as ``phi_mr``).
        branch_trunk: ``"mr"`` or ``"hr"``: the trunk the branches are grafted on (``None``:
            φ_mr when it is trained from scratch, else φ_hr / the given trunk).
        trunk_options: TrunkConfig fields overriding the trunk recipe (from-scratch trunks).
        finetune_options: TrunkConfig fields overriding :data:`FINETUNE` (given trunk).
        branch_options: BranchConfig fields overriding the branch recipe.
        train_resize: the down-sampling of every training degradation (``None``:
            :func:`default_resize`, set by :meth:`validate`).
        eval_resize: the resize of the verification and open-set protocols (``None``: the same).
        degradation: ``None`` (images are resized: the paper's protocol) or a preset name of
            :data:`btnet_adapters.data.degrade.DEGRADATION_PRESETS` (``"realistic"``): every
            training degradation and every evaluation image brought below its size use it
            (seeded), the up-sampling back to the trunk size still uses the resizes above.
        flip: flip test-time augmentation in verification.
        eval_batch_size: images per forward pass in evaluation.
        seed: seed of the ORL pairs and of every training run.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        workers: DataLoader workers of the training runs.
        channels_last: channels-last memory format (faster on CPU for depthwise nets).
        threads: torch intra-op threads during the run (``None``: 1 on the embedded ORL data,
            where one thread is fastest on a busy machine; torch's default otherwise).
        progress: progress bars.
    """

    out: str = "btnet_reproduce"
    train: str | None = None
    train_root: str | None = None
    pairs: str | None = None
    images: str | None = None
    openset: str | None = None
    probe_size: int = 14
    orl_test_identities: int = 10
    trunk: str | None = None
    model: str | None = None
    model_kwargs: dict[str, Any] | None = None
    resolutions: tuple[int, ...] = (7, 14, 28)
    phi_mr: bool | None = None
    phi_mm: bool | None = None
    branch_trunk: str | None = None
    trunk_options: dict[str, Any] = field(default_factory=dict)
    finetune_options: dict[str, Any] = field(default_factory=dict)
    branch_options: dict[str, Any] = field(default_factory=dict)
    train_resize: ResizeSpec | None = None
    eval_resize: ResizeSpec | None = None
    degradation: str | None = None
    flip: bool = True
    eval_batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    channels_last: bool = True
    threads: int | None = None
    progress: bool = True

    # ------------------------------------------------------------------ modes
    @property
    def given_trunk(self) -> bool:
        """A trained trunk is given (else every model is trained here)."""
        return self.trunk is not None

    @property
    def embedded_data(self) -> bool:
        """The bundled ORL faces are used."""
        return self.train is None

    @property
    def train_mr(self) -> bool:
        """Whether φ_mr is trained."""
        return (not self.given_trunk) if self.phi_mr is None else bool(self.phi_mr)

    @property
    def train_mm(self) -> bool:
        """Whether φ_mm is trained."""
        return (not self.given_trunk) if self.phi_mm is None else bool(self.phi_mm)

    @property
    def grafted_on(self) -> str:
        """``"mr"`` or ``"hr"``: the trunk carrying the branches."""
        if self.branch_trunk is not None:
            return self.branch_trunk
        return "mr" if self.train_mr and not self.given_trunk else "hr"

    # ------------------------------------------------------------------ recipes
    def trunk_recipe(self) -> dict[str, Any]:
        """TrunkConfig fields of a from-scratch trunk (φ_hr, φ_mr, φ_mm)."""
        return {**ORL_TRUNK, **self.trunk_options}

    def finetune_recipe(self) -> dict[str, Any]:
        """TrunkConfig fields of a fine-tune of the given trunk (φ_mr, φ_mm)."""
        return {**FINETUNE, **self.finetune_options}

    def branch_recipe(self) -> dict[str, Any]:
        """BranchConfig fields of every branch run."""
        base = GIVEN_BRANCH if self.given_trunk else ORL_BRANCH
        return {**base, **self.branch_options}

    @property
    def torch_threads(self) -> int | None:
        """Threads to run with (``None``: leave torch's setting)."""
        return self.threads if self.threads is not None else (1 if self.embedded_data else None)

    def settings(self, input_size: int = 112) -> list[str]:
        """The verification settings: ``S&r`` for each r, ``r&r`` for each r, then ``S&S``."""
        rs = sorted(self.resolutions)
        return [f"{input_size}&{r}" for r in rs] + [f"{r}&{r}" for r in rs] + [f"{input_size}&{input_size}"]

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistent setting (files are checked
        by the pipeline before any compute)."""
        if not self.out:
            raise ConfigError("out is required: the output folder")
        if self.train is not None and self.pairs is None:
            raise ConfigError("with your own training data give --pairs too (a 'path1 path2 same [fold]' list or LFW's "
                              "pairs.txt); without --train the bundled ORL faces are used")
        if self.train is None and (self.pairs is not None or self.openset is not None):
            raise ConfigError("--pairs / --openset need --train (the data the classifier and branches train on)")
        rs = tuple(int(r) for r in self.resolutions)
        if not rs or len(set(rs)) != len(rs) or min(rs) < 1:
            raise ConfigError(f"resolutions must be distinct positive sides, e.g. 7,14,28; got {self.resolutions}")
        self.resolutions = tuple(sorted(rs))
        if self.branch_trunk not in (None, "hr", "mr"):
            raise ConfigError(f"branch_trunk must be 'hr' or 'mr', got {self.branch_trunk!r}")
        if self.grafted_on == "mr" and not self.train_mr:
            raise ConfigError("branch_trunk='mr' needs φ_mr (--phi-mr)")
        for name in ("probe_size", "eval_batch_size", "orl_test_identities"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 2 <= self.orl_test_identities <= 38:
            raise ConfigError(f"orl_test_identities must be in 2..38 (ORL has 40 people), got {self.orl_test_identities}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.model_kwargs is not None and self.model is None:
            raise ConfigError("model_kwargs without model: name the model too")
        if self.degradation is not None and self.degradation not in DEGRADATION_PRESETS:
            raise ConfigError(f"unknown degradation {self.degradation!r}; accepted: {sorted(DEGRADATION_PRESETS)}")
        self.train_resize = self.train_resize or default_resize()
        self.eval_resize = self.eval_resize or default_resize()
        if not isinstance(self.train_resize, ResizeSpec) or not isinstance(self.eval_resize, ResizeSpec):
            raise ConfigError("train_resize and eval_resize must be ResizeSpec objects")
        for name, cls in (("trunk_options", TrunkConfig), ("finetune_options", TrunkConfig),
                          ("branch_options", BranchConfig)):
            options = getattr(self, name)
            if not isinstance(options, dict):
                raise ConfigError(f"{name} must be a JSON object of {cls.__name__} fields")
            unknown = sorted(set(options) - (_fields(cls) - _RESERVED))
            if unknown:
                raise ConfigError(f"{name}: {unknown} cannot be set here; accepted: "
                                  f"{sorted(_fields(cls) - _RESERVED)}")

    def train_degradation(self, upsample: bool) -> DegradationSpec:
        """The degradation of the training runs (branches: ``upsample=False``; φ_mr/φ_mm: True)."""
        assert self.train_resize is not None, "validate() first"
        if self.degradation is None:
            return DegradationSpec(self.train_resize, upsample=upsample)
        spec = DegradationSpec.named(self.degradation, upsample=upsample)
        return dataclasses.replace(spec, upsample_resize=self.train_resize) if upsample else spec

    def eval_degradation(self) -> DegradationSpec | None:
        """The degradation of evaluation images (``None``: resized with :attr:`eval_resize`)."""
        return None if self.degradation is None else DegradationSpec.named(self.degradation)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (recorded with the results)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, ResizeSpec) else value
        out["resolutions"] = list(self.resolutions)
        return json.loads(json.dumps(out))


def openset_lists(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The gallery / mated / unmated lists of an open-set protocol folder (:data:`OPENSET_FILES`).

    Raises:
        ConfigError: the folder or one of the lists is missing.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"open-set folder not found: {root}")
    found = {}
    for role, names in OPENSET_FILES.items():
        hits = [root / n for n in names if (root / n).is_file()]
        if not hits:
            raise ConfigError(f"{root} has no {role} list; expected one of {list(names)}")
        found[role] = hits[0]
    return found
