"""The reproduction pipeline: plan the stages, run them (resumably), evaluate, report.

Stages, in order (each a folder under ``out``; see :mod:`.stages` for resuming):

======================  ==============================================================
``data``                the bundled ORL faces as 112×112 PNGs + train/test lists + pairs
``trunk_hr``            φ_hr, trained at 112 only (embedded default)
``trunk_mr``            φ_mr, trained on v1 mixed resolutions (or fine-tuned from a given trunk)
``mm_r<r>``             φ_mm, one model per resolution r (trained at r, or fine-tuned)
``classifier``          a margin head fitted on ``train`` for a given trunk without one
``branch_r<r>``         BTNet branch r (trunk and classifier frozen), an adapter
``eval_<model>``        verification (+ open set) of one model
======================  ==============================================================

φ_hr, φ_mr and φ_mm see low-resolution images up-sampled back to the trunk size; φ_bt (the
BTNet: the chosen trunk + the branches) routes each image to the branch of its side.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from .. import hub
from ..data import PRESETS, FaceDataset, open_source, write_class_index
from ..errors import ConfigError, ResolutionError
from ..evaluate import read_identity_tsv, read_pair_list
from ..evaluate.runners import BTNetEmbedder, UpsamplingEmbedder, run_identification, run_verification
from ..model import BTNet
from ..train import (BranchConfig, TrunkConfig, build_model, fit_classifier, load_trunk_folder, save_classifier,
                     train_branch, train_trunk)
from ..train.distributed import resolve_device
from .config import ORL_MODEL, ReproduceConfig, openset_lists
from .orl import prepare_orl
from .report import Report, build_report
from .stages import Stage, StageInterrupted, StageRunner, spec_key
from .trunks import TrunkSource

#: TrunkConfig / BranchConfig fields left out of stage specs: how a run is executed, or input
#: paths (replaced by the identities of the inputs).
_NOT_IN_SPEC = {"out", "resume", "progress", "workers", "device", "log_every", "checkpoint_every",
                "keep_checkpoints", "channels_last", "data", "data_root", "trunk", "trunk_weights", "classifier",
                "init_weights"}
#: Checkpoint interval of every training stage (an interrupted stage resumes from here).
CHECKPOINT_EVERY = 50
CLASSIFIER_FILE = "classifier.safetensors"

#: Table rows: label and what the model is.
ROWS: dict[str, tuple[str, str]] = {
    "phi_hr": ("φ_hr", "trunk trained on {S} px only; low-res images up-sampled to {S}"),
    "phi_mr": ("φ_mr", "trunk trained on mixed resolutions (v1), up-sampled"),
    "phi_mm": ("φ_mm", "one model per resolution r (trained at r), up-sampled"),
    "phi_bt": ("φ_bt", "BTNet: {trunk} trunk + branches {rs}, trunk and classifier frozen"),
}


@dataclass(frozen=True)
class DataPaths:
    """The data a run trains and evaluates on.

    Attributes:
        train: training list / folder / ``.rec``.
        train_root: root of a training list's paths (``None``: its folder).
        pairs: verification pair list.
        images: root of the pair and open-set paths (``None``: the pair list's folder).
        openset: open-set lists by role (``gallery``, ``mated``, ``unmated``), or ``None``.
        identity: what identifies the data in stage specs.
    """

    train: Path
    train_root: Path | None
    pairs: Path
    images: Path | None
    openset: dict[str, Path] | None
    identity: dict[str, Any]


@dataclass
class ModelEntry:
    """One model of the comparison and how to evaluate it.

    Attributes:
        key: stage suffix (``phi_hr``, ``phi_mm_r14`` ...).
        row: the table row it fills (``phi_hr``, ``phi_mr``, ``phi_mm``, ``phi_bt``).
        load: builds the model (CPU, eval mode).
        routes: a BTNet routing images to branches (else up-sampling to the trunk size).
        settings: the verification settings it is scored on.
        upstream: keys of the stages that made it.
        openset: also run the open-set protocol.
    """

    key: str
    row: str
    load: Callable[[], BTNet]
    routes: bool
    settings: list[str]
    upstream: list[str]
    openset: bool = True


@dataclass
class ReproduceResult:
    """What :func:`run_reproduce` did and wrote.

    Attributes:
        out: the output folder.
        report: the tables (accuracy, gains, costs, open set) and their text.
        files: written files by role (``table_md``, ``table_json``, ``plot_cross`` ...).
        evaluations: raw evaluation results per model key.
        wall_seconds: time of this call.
        cpu_seconds: CPU time of this process (user + system) during the call.
        skipped: stages found complete and reused.
    """

    out: Path
    report: Report
    files: dict[str, Path]
    evaluations: dict[str, dict[str, Any]]
    wall_seconds: float
    cpu_seconds: float
    skipped: list[str] = field(default_factory=list)


def _file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime": int(stat.st_mtime)}


def available_resolutions(model: BTNet) -> list[int]:
    """Branch resolutions a trunk supports: the levels of its pyramid below its input size."""
    return sorted(s for s in model.pyramid if s < model.input_size)


def check_resolutions(model: BTNet, resolutions: tuple[int, ...]) -> None:
    """Raise :class:`ResolutionError` when a resolution is not a level of the trunk's pyramid."""
    allowed = available_resolutions(model)
    bad = [r for r in resolutions if r not in allowed]
    if bad:
        raise ResolutionError(f"resolution(s) {bad} are not levels of the trunk's feature pyramid at "
                              f"{model.input_size} px; branch resolutions available: {allowed}")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Reproduction:
    """Plans and runs one reproduction (see the module docstring).

    Every input is checked when this object is built, before any compute. Progress lines
    (``[i/n] stage ...``) go to ``stream``; by default to ``sys.stderr`` when
    ``config.progress`` is set, else nowhere.
    """

    def __init__(self, config: ReproduceConfig, stream: TextIO | None = None) -> None:
        config.validate()
        self.config = config
        self.stream = stream if stream is not None else (sys.stderr if config.progress else None)
        self.out = Path(config.out).expanduser().resolve()
        self.given = (TrunkSource.resolve(config.trunk, config.model, config.model_kwargs)
                      if config.given_trunk else None)
        if self.given is None:
            self.model_name, self.model_kwargs = ((config.model, dict(config.model_kwargs or {}))
                                                  if config.model else ORL_MODEL)
            probe = build_model(self.model_name, self.model_kwargs)
        else:
            probe = self.given.load()[0]
        check_resolutions(probe, config.resolutions)
        self.input_size = probe.input_size
        if config.train_mr and self.input_size < max(PRESETS["v1"][0]):
            raise ConfigError(f"φ_mr trains on the reference's v1 sizes {PRESETS['v1'][0]}, which need a trunk input "
                              f"of at least {max(PRESETS['v1'][0])} px (this trunk takes {self.input_size}); "
                              "pass --no-phi-mr")
        self.trunk_has_classifier = (self.given is not None and self.given.is_folder
                                     and (self.given.path / hub.CLASSIFIER_NAME).is_file())
        self.device = resolve_device(config.device)
        self.data = None if config.embedded_data else self._given_data()
        self.stages: list[tuple[Stage, Callable[[Path, bool], dict[str, Any]]]] = []
        self.models: list[ModelEntry] = []
        self._plan()

    # ------------------------------------------------------------------ data
    def _given_data(self) -> DataPaths:
        c = self.config
        train, pairs = Path(str(c.train)).expanduser().resolve(), Path(str(c.pairs)).expanduser().resolve()
        root = Path(c.train_root).expanduser().resolve() if c.train_root else None
        images = Path(c.images).expanduser().resolve() if c.images else None
        open_source(train, root=root)  # checks the list and that every file exists
        read_pair_list(pairs, images)  # checks the pairs and that every image exists
        lists = openset_lists(c.openset) if c.openset else None
        for path in (lists or {}).values():
            read_identity_tsv(path, images if images is not None else pairs.parent)
        identity = {"train": _file_identity(train), "pairs": _file_identity(pairs),
                    "openset": {k: _file_identity(v) for k, v in (lists or {}).items()}}
        return DataPaths(train, root, pairs, images, lists, identity)

    def _orl_data(self) -> DataPaths:
        folder = self.out / "data"
        return DataPaths(folder / "train.tsv", folder / "images", folder / "pairs.tsv", folder / "images", None,
                         {"orl": self._stage_key("data")})

    # ------------------------------------------------------------------ planning
    def _add(self, stage: Stage, work: Callable[[Path, bool], dict[str, Any]]) -> Stage:
        self.stages.append((stage, work))
        return stage

    def _stage_key(self, name: str) -> str:
        return next(s.key for s, _ in self.stages if s.name == name)

    def _plan(self) -> None:
        c = self.config
        if c.embedded_data:
            spec = {"kind": "orl", "test_identities": c.orl_test_identities, "seed": c.seed, "version": 1}
            self._add(Stage("data", f"ORL faces: {40 - c.orl_test_identities} training identities, "
                                    f"pairs of {c.orl_test_identities} others", self.out / "data", spec),
                      self._work_data)
            self.data = self._orl_data()
        trunks: dict[str, tuple[Callable[[], BTNet], list[str], dict[str, Any]]] = {}
        if self.given is None:
            hr = self._trunk_stage("trunk_hr", f"φ_hr trunk ({self.input_size} px only, from scratch)", "hr")
            trunks["hr"] = (self._folder_loader(hr.folder), [hr.key], {"trunk": str(hr.folder)})
        else:
            given = self.given
            trunks["hr"] = (lambda: given.load()[0], [spec_key({"trunk": given.identity()})], given.branch_options())
        tuned = "" if self.given is None else ", fine-tuned from the given trunk"
        if c.train_mr:
            mr = self._trunk_stage("trunk_mr", f"φ_mr trunk (mixed resolutions v1{tuned})", "v1")
            trunks["mr"] = (self._folder_loader(mr.folder), [mr.key], {"trunk": str(mr.folder)})
        mm: dict[int, Stage] = {}
        if c.train_mm:
            for r in c.resolutions:
                mm[r] = self._trunk_stage(f"mm_r{r}", f"φ_mm model for {r} px{tuned}", "mm", resolution=r)
        load_base, base_keys, base_options = trunks[c.grafted_on]
        classifier = None
        if (self.given is not None and c.grafted_on == "hr" and not self.trunk_has_classifier
                and c.branch_recipe().get("cls_weight", BranchConfig.cls_weight) > 0):  # pure distillation needs none
            classifier = self._classifier_stage()
            base_keys = [*base_keys, classifier.key]
        branches = [self._branch_stage(r, base_options, base_keys, classifier) for r in c.resolutions]

        settings = c.settings(self.input_size)
        self.models.append(ModelEntry("phi_hr", "phi_hr", trunks["hr"][0], False, settings, trunks["hr"][1]))
        if "mr" in trunks:
            self.models.append(ModelEntry("phi_mr", "phi_mr", trunks["mr"][0], False, settings, trunks["mr"][1]))
        for r, stage in mm.items():
            self.models.append(ModelEntry(f"phi_mm_r{r}", "phi_mm", self._folder_loader(stage.folder), False,
                                          [f"{r}&{r}"], [stage.key], openset=False))
        self.models.append(ModelEntry("phi_bt", "phi_bt", self._btnet_loader(load_base, branches), True, settings,
                                      [*base_keys, *(b.key for b in branches)]))
        for entry in self.models:
            self._eval_stage(entry)

    def _train_spec(self, cfg: TrunkConfig | BranchConfig, inputs: dict[str, Any]) -> dict[str, Any]:
        spec = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_SPEC}
        return {**spec, "inputs": inputs}

    def _runtime(self, folder: Path) -> dict[str, Any]:
        c = self.config
        return {"out": str(folder), "seed": c.seed, "device": c.device, "workers": c.workers,
                "progress": c.progress, "channels_last": c.channels_last, "checkpoint_every": CHECKPOINT_EVERY,
                "keep_checkpoints": 1, "log_every": 10}

    def _data_options(self) -> dict[str, Any]:
        assert self.data is not None
        return {"data": str(self.data.train),
                "data_root": str(self.data.train_root) if self.data.train_root else None}

    def _trunk_stage(self, name: str, title: str, multires: str, resolution: int | None = None) -> Stage:
        c, folder = self.config, self.out / name
        degradation = c.train_degradation(upsample=True).to_dict()
        if self.given is None:
            fields = {"model": self.model_name, "model_kwargs": self.model_kwargs, **c.trunk_recipe()}
            inputs = {"data": self.data.identity if self.data else None}
        else:
            fields = {**self.given.trunk_options(), **c.finetune_recipe()}
            inputs = {"data": self.data.identity if self.data else None, "trunk": self.given.identity()}
        cfg = TrunkConfig.from_dict({"degradation": degradation, **self._runtime(folder), **self._data_options(),
                                     **fields, "multires": multires, "resolution": resolution})
        cfg.validate()
        return self._add(Stage(name, title, folder, self._train_spec(cfg, inputs)),
                         lambda out, resume: self._work_trunk(cfg, resume))

    def _classifier_stage(self) -> Stage:
        recipe = self.config.branch_recipe()
        spec = {"trunk": self.given.identity() if self.given else None, "data": self.data.identity if self.data else None,
                "margin": recipe.get("margin", "curricularface"), "margin_kwargs": recipe.get("margin_kwargs", {}),
                "fit_epochs": recipe.get("fit_epochs", 3), "fit_lr": recipe.get("fit_lr", 0.1),
                "batch_size": recipe.get("batch_size", 64), "flip": recipe.get("flip", True), "seed": self.config.seed}
        return self._add(Stage("classifier", "classifier fitted on the training identities (trunk frozen)",
                               self.out / "classifier", spec), self._work_classifier)

    def _branch_stage(self, r: int, trunk_options: dict[str, Any], upstream: list[str],
                      classifier: Stage | None) -> Stage:
        c, folder = self.config, self.out / f"branch_r{r}"
        degradation = c.train_degradation(upsample=False).to_dict()
        fields = {**trunk_options, **c.branch_recipe()}
        if classifier is not None:
            fields["classifier"] = str(classifier.folder / CLASSIFIER_FILE)
        cfg = BranchConfig.from_dict({"degradation": degradation, **self._runtime(folder), **self._data_options(),
                                      **fields, "resolution": r})
        cfg.validate()
        inputs = {"data": self.data.identity if self.data else None, "upstream": upstream,
                  "trunk": self.given.identity() if self.given and c.grafted_on == "hr" else None}
        on = "φ_mr" if c.grafted_on == "mr" else "φ_hr" if self.given is None else "the given"
        return self._add(Stage(f"branch_r{r}", f"branch {r} px on {on} trunk (BTNet recipe)", folder,
                               self._train_spec(cfg, inputs)), lambda out, resume: self._work_branch(cfg, resume))

    def _eval_stage(self, entry: ModelEntry) -> Stage:
        c = self.config
        assert self.data is not None
        spec = {"model": entry.key, "upstream": entry.upstream, "data": self.data.identity,
                "settings": entry.settings, "resize": c.eval_resize.to_dict(), "flip": c.flip,
                **({"degradation": c.eval_degradation().to_dict()} if c.degradation else {}),
                "openset": ({"probe_size": c.probe_size} if self.data.openset and entry.openset else None)}
        label = ROWS[entry.row][0] + (f" ({entry.key.rsplit('_', 1)[-1]})" if entry.row == "phi_mm" else "")
        return self._add(Stage(f"eval_{entry.key}", f"evaluating {label}", self.out / f"eval_{entry.key}", spec),
                         lambda out, resume: self._work_eval(entry, label))

    # ------------------------------------------------------------------ loaders
    @staticmethod
    def _folder_loader(folder: Path) -> Callable[[], BTNet]:
        return lambda: load_trunk_folder(folder)[0]

    def _btnet_loader(self, base: Callable[[], BTNet], branches: list[Stage]) -> Callable[[], BTNet]:
        def load() -> BTNet:
            model = base()
            for stage in branches:
                hub.load_adapter(model, stage.folder, int(stage.name.removeprefix("branch_r")))
            return model.eval()
        return load

    # ------------------------------------------------------------------ work
    def _work_data(self, folder: Path, resume: bool) -> dict[str, Any]:
        split = prepare_orl(folder, test_identities=self.config.orl_test_identities, seed=self.config.seed)
        return {"train_identities": split.train_identities, "test_identities": split.test_identities,
                "pairs": split.num_pairs}

    @staticmethod
    def _finished(result: Any, what: str) -> dict[str, Any]:
        if result.interrupted:
            raise StageInterrupted(f"{what} stopped at step {result.step}/{result.total_steps}; run the same "
                                   "command again to resume it", signal=result.signal)
        return {"steps": result.step, "last": result.last}

    def _work_trunk(self, cfg: TrunkConfig, resume: bool) -> dict[str, Any]:
        return self._finished(train_trunk(cfg.replace(resume=resume)), f"training {cfg.out}")

    def _work_branch(self, cfg: BranchConfig, resume: bool) -> dict[str, Any]:
        result = self._finished(train_branch(cfg.replace(resume=resume)), f"branch run {cfg.out}")
        return {**result, "resolution": cfg.resolution}

    def _work_classifier(self, folder: Path, resume: bool) -> dict[str, Any]:
        assert self.given is not None and self.data is not None
        c, recipe = self.config, self.config.branch_recipe()
        model = self.given.load()[0].to(self.device)
        source = open_source(self.data.train, root=self.data.train_root)
        data = FaceDataset(source, size=model.input_size, flip=recipe.get("flip", True), seed=c.seed)
        head = fit_classifier(model, data, source.num_classes, margin=recipe.get("margin", "curricularface"),
                              margin_kwargs=recipe.get("margin_kwargs"), epochs=recipe.get("fit_epochs", 3),
                              lr=recipe.get("fit_lr", 0.1), batch_size=recipe.get("batch_size", 64), seed=c.seed,
                              workers=c.workers, device=self.device, progress=c.progress)
        save_classifier(head, folder / CLASSIFIER_FILE)
        write_class_index(folder / "classes.json", source.class_to_idx)
        return {"identities": source.num_classes, "images": len(source)}

    def _work_eval(self, entry: ModelEntry, label: str) -> dict[str, Any]:
        c, data = self.config, self.data
        assert data is not None
        model = entry.load().to(self.device)
        if c.channels_last:
            model.to(memory_format=torch.channels_last)
        embedder = (BTNetEmbedder(model, label) if entry.routes else UpsamplingEmbedder.from_btnet(model, label))
        pairs = read_pair_list(data.pairs, data.images)
        run = run_verification(embedder, pairs, entry.settings, resize=c.eval_resize, flip=c.flip,
                               degradation=c.eval_degradation(),
                               batch_size=c.eval_batch_size, progress=c.progress, name=label)
        result: dict[str, Any] = {"verification": {s: {**r.to_dict(), "paths": list(run.paths[s])}
                                                   for s, r in run.results.items()}}
        if data.openset and entry.openset:
            root = data.images if data.images is not None else data.pairs.parent
            lists = {k: read_identity_tsv(v, root) for k, v in data.openset.items()}
            ident = run_identification(embedder, lists["gallery"], lists["mated"], lists["unmated"],
                                       resize=c.eval_resize, probe_size=c.probe_size,
                                       degradation=c.eval_degradation(),
                                       batch_size=c.eval_batch_size, progress=c.progress, name=label)
            result["openset"] = {"rows": ident.rows, "routes": {str(k): v for k, v in ident.routes.items()}}
        return result

    # ------------------------------------------------------------------ run
    def run(self) -> ReproduceResult:
        """Run (or resume) every stage, then write and return the report."""
        start, cpu, threads = time.perf_counter(), _cpu_seconds(), torch.get_num_threads()
        runner = StageRunner(len(self.stages), self.stream)
        try:
            torch.set_num_threads(self.config.torch_threads or threads)
            results = {stage.name: runner.run(stage, work) for stage, work in self.stages}
        finally:
            torch.set_num_threads(threads)
        evaluations = {m.key: results[f"eval_{m.key}"] for m in self.models}
        bt = next(m for m in self.models if m.key == "phi_bt").load()
        report, files = build_report(self.out, self.config, evaluations, bt, self._describe(),
                                     seconds={"wall": time.perf_counter() - start, "cpu": _cpu_seconds() - cpu,
                                              "stages": dict(runner.recorded), "ran": sorted(runner.timings)})
        return ReproduceResult(self.out, report, files, evaluations, time.perf_counter() - start,
                               _cpu_seconds() - cpu, runner.skipped)

    def _describe(self) -> dict[str, str]:
        c, S = self.config, self.input_size
        rs = "/".join(str(r) for r in c.resolutions)
        trunk = "φ_mr" if c.grafted_on == "mr" else ("φ_hr" if self.given is None else "the given")
        desc = {k: text.format(S=S, trunk=trunk, rs=rs) for k, (_, text) in ROWS.items()}
        if self.given is not None:
            desc["phi_hr"] = f"the given trunk ({self.given.path.name}) as it is; low-res images up-sampled to {S}"
            desc["phi_mr"] = "the given trunk fine-tuned on mixed resolutions (v1), up-sampled"
            desc["phi_mm"] = "the given trunk fine-tuned at each resolution r, up-sampled"
        return desc


def run_reproduce(config: ReproduceConfig, stream: TextIO | None = None) -> ReproduceResult:
    """Run the paper's cross-resolution comparison as ``config`` says (resuming what is done).

    Progress lines go to ``stream`` (default: ``sys.stderr`` when ``config.progress``).

    Returns:
        The :class:`ReproduceResult` (tables, written files, timings).

    Raises:
        ConfigError, ResolutionError, MissingDataError: bad inputs, before any compute.
        StageInterrupted: a training stage was stopped (SIGINT/SIGTERM); rerun to resume.
    """
    return Reproduction(config, stream).run()


__all__ = ["DataPaths", "ModelEntry", "Reproduction", "ReproduceResult", "available_resolutions",
           "check_resolutions", "run_reproduce"]
