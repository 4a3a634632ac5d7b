"""Save, load and publish BTNet: one trunk, one small adapter per resolution.

Artifact layout written by :func:`save_pretrained` (format version 1)::

    config.json                  timm's hub config: architecture, num_features, pretrained_cfg,
                                 model_args (= model.config()), plus a "btnet" section: format
                                 version, resolutions, routing, resize, trunk fingerprint,
                                 per-resolution plans and the checksum of every weight file
    model.safetensors            the inference model as timm loads it: trunk + embedding head +
                                 every branch, under BTNet's own state_dict names
    classifier.safetensors       the margin head (optional; needed to train branches, not to embed)
    adapters/r{r}/adapter_config.json       one resolution: its plan (implant point, specific
    adapters/r{r}/adapter_model.safetensors modules), the base trunk (architecture + fingerprint)
                                            and ONLY that resolution's tensors (branch_state_dict)
    README.md                    generated model card

``model.safetensors`` holds the branches too because timm's loaders read one weight file and
load it strictly; the adapter folders repeat each resolution's tensors so that one resolution can
be published, downloaded and loaded alone (:func:`load_adapter`), PEFT style. Adapters name the
trunk they were trained on by a fingerprint (sha256 over the sorted trunk + head tensors: names,
dtypes, shapes, bytes); loading one onto another trunk is refused unless ``force=True``.

Only JSON and safetensors are ever read from an artifact, never pickles. Every file is written
atomically, and existing files are only replaced with ``overwrite=True``. The module imports
torch lazily: the ONNX runtime path (:mod:`btnet_adapters.export`) shares its file helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from .errors import BTNetError, ConfigError, ResolutionError

if TYPE_CHECKING:
    import torch

    from .model import BTNet

__all__ = [
    "ADAPTERS_DIR",
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "CLASSIFIER_NAME",
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "ArtifactError",
    "ArtifactExistsError",
    "FingerprintMismatchError",
    "HubMixin",
    "fingerprint",
    "from_pretrained",
    "load_adapter",
    "push_to_hub",
    "register",
    "save_adapter",
    "save_pretrained",
    "stage_for_hub",
    "trunk_fingerprint",
    "write_folder",
]

#: Version of the artifact layout; readers refuse newer versions.
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CLASSIFIER_NAME = "classifier.safetensors"
ADAPTERS_DIR = "adapters"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
#: timm architecture recorded for models whose backbone has no ``btnet_*`` zoo entry.
GENERIC_ARCHITECTURE = "btnet"
#: Model arguments that decide the trunk's structure (an adapter needs them equal).
STRUCTURE_KEYS = ("backbone", "input_size", "embed_dim", "head", "remove", "backbone_kwargs")
DEFAULT_ROUTING = {"indicator": "max", "strategy": "ceil"}
_ADAPTER_KIND = "btnet-adapter"
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
# pretrained_cfg keys that describe where weights came from, not the weights themselves.
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag")


class ArtifactError(ConfigError):
    """A saved model or adapter is missing, corrupted, from a newer format or does not fit."""


class FingerprintMismatchError(ArtifactError):
    """An adapter was trained on another trunk (both fingerprints are named)."""


class ArtifactExistsError(BTNetError, FileExistsError):
    """Saving would replace existing files and ``overwrite=True`` was not given."""


# --------------------------------------------------------------------------- fingerprints
def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """``"sha256:<hex>"`` over tensors sorted by name: each name, dtype, shape and raw bytes."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        header = json.dumps([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]).encode()
        data = tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b""
        for chunk in (header, data):
            digest.update(len(chunk).to_bytes(8, "little"))
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def trunk_fingerprint(model: BTNet) -> str:
    """Fingerprint of the trunk and embedding head (what every branch runs through)."""
    return fingerprint(model.trunk_state_dict())


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


# --------------------------------------------------------------------------- small helpers
def _library_version() -> str:
    from . import __version__

    return __version__


def _inside(root: Path, relative: str, what: str) -> Path:
    """``root / relative`` for a relative POSIX path that cannot leave ``root``."""
    pure = PurePosixPath(relative)
    if (not relative or pure.is_absolute() or "\\" in relative or ":" in relative
            or any(part == ".." for part in pure.parts)):
        raise ArtifactError(
            f"{what} {relative!r} escapes the artifact directory; only relative paths inside it "
            f"are accepted (e.g. '{ADAPTERS_DIR}/r14')"
        )
    return root.joinpath(*pure.parts)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ArtifactError(f"{what} not found: {path}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{what} ({path}) is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} ({path}) must hold a JSON object, got {type(data).__name__}")
    return data


def _check_version(section: Mapping[str, Any], what: str) -> None:
    version = section.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{what} has no valid format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{what} uses format version {version}, written by btnet_adapters "
            f"{section.get('library_version', '?')}; this btnet_adapters ({_library_version()}) reads "
            f"format versions up to {FORMAT_VERSION}: upgrade btnet_adapters"
        )


def _verify_file(path: Path, record: Mapping[str, Any] | None, what: str) -> None:
    """The file exists and (when recorded) has the recorded checksum."""
    if not path.is_file():
        raise ArtifactError(f"{what} is missing: {path}")
    expected = (record or {}).get("sha256")
    if expected is None:
        return
    actual = _file_sha256(path)
    if actual != expected:
        raise ArtifactError(
            f"{what} ({path}) is corrupted or was modified: its checksum is {actual}, the artifact "
            f"records {expected} (size {path.stat().st_size} bytes, recorded {(record or {}).get('bytes')})"
        )


def _read_safetensors(path: Path, what: str, keys: set[str] | None = None) -> tuple[dict[str, torch.Tensor], set[str]]:
    """(tensors named in ``keys`` or all, every name in the file)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names = set(handle.keys())
            wanted = names if keys is None else names & keys
            return {k: handle.get_tensor(k) for k in sorted(wanted)}, names
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ArtifactError(f"{what} ({path}) is not a readable safetensors file (truncated or corrupted?): {err}") from err


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Write and checksum. The metadata is only ``{"format": "pt"}``: safetensors writes a
    metadata dict in arbitrary order, so more keys would make the bytes differ between saves."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    return {"sha256": _file_sha256(path), "bytes": path.stat().st_size}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples timm configs use."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# --------------------------------------------------------------------------- architecture
def _architecture(model: BTNet) -> str:
    """The timm name that rebuilds ``model`` from ``model_args`` (zoo entry or the generic one)."""
    import timm

    from .zoo import ZOO

    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if isinstance(name, str) and name.startswith("btnet") and timm.is_model(name):
        return name
    backbone = model.config()["backbone"]
    for zoo_name, defaults in ZOO.items():  # model_args override every zoo default
        if defaults.get("backbone") == backbone:
            return zoo_name
    if not timm.is_model(GENERIC_ARCHITECTURE):
        warnings.warn(
            f"backbone {backbone!r} has no btnet_* zoo entry and timm has no generic "
            f"{GENERIC_ARCHITECTURE!r} entry point: timm.create_model('hf-hub:…') cannot rebuild this "
            "model; BTNet.from_pretrained can",
            stacklevel=3,
        )
    return GENERIC_ARCHITECTURE


def _pretrained_cfg(model: BTNet, license: str | None) -> dict[str, Any]:
    import dataclasses

    from timm.models import PretrainedCfg

    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    cfg = {k: _jsonable(v) for k, v in (model.pretrained_cfg or {}).items()
           if k in fields and k not in (*_SOURCE_KEYS, "license") and v is not None}
    cfg.update(num_classes=0, custom_load=False, fixed_input_size=False)
    if license:
        cfg["license"] = license
    return cfg


def _plan_record(model: BTNet, resolution: int) -> dict[str, Any]:
    plan = model.branches[str(resolution)].plan
    return {
        "stage": plan.stage, "implant": plan.implant, "implant_shape": list(plan.implant_shape),
        "specific": list(plan.specific), "downsampling": [list(d) for d in plan.downsampling],
        "norms": len(plan.norms),
    }


def _structure(model_args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _jsonable(model_args.get(k)) for k in STRUCTURE_KEYS}


def _check_resolutions(model: BTNet, resolutions: Sequence[int] | None) -> list[int]:
    have = list(model.branch_resolutions)
    if resolutions is None:
        return have
    wanted = sorted({int(r) for r in resolutions})
    missing = [r for r in wanted if r not in have]
    if missing:
        raise ResolutionError(f"the model has no branch for {missing}; its branches: {have}")
    return wanted


# --------------------------------------------------------------------------- writing
def _adapter_config(model: BTNet, resolution: int, tensors: Mapping[str, torch.Tensor],
                    base_fingerprint: str, architecture: str) -> dict[str, Any]:
    return {
        "format": _ADAPTER_KIND,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "resolution": resolution,
        "input_size": model.input_size,
        "base_model": {
            "architecture": architecture,
            "repo_id": (model.pretrained_cfg or {}).get("hf_hub_id"),
            "model_args": _structure(model.config()),
            "trunk_fingerprint": base_fingerprint,
        },
        "plan": _plan_record(model, resolution),
        "resize": model.resize_spec.to_dict(),
        "routing": dict(DEFAULT_ROUTING),
        "tensors": {"count": len(tensors), "parameters": sum(t.numel() for t in tensors.values()),
                    "bytes": _nbytes(tensors), "fingerprint": fingerprint(tensors)},
    }


def _write_adapter(model: BTNet, folder: Path, resolution: int, base_fingerprint: str, architecture: str) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = model.branch_state_dict(resolution)
    config = _adapter_config(model, resolution, tensors, base_fingerprint, architecture)
    config["file"] = _write_safetensors(folder / ADAPTER_WEIGHTS_NAME, tensors)
    _write_json(folder / ADAPTER_CONFIG_NAME, config)
    return config


def _write_artifact(model: BTNet, folder: Path, resolutions: list[int], classifier: bool, adapters_only: bool,
                    metrics: Mapping[str, Any] | None, license: str | None, model_card: bool,
                    repo_id: str | None) -> list[str]:
    """Write every file of the artifact into an empty ``folder``; return their relative paths."""
    architecture = _architecture(model)
    base = trunk_fingerprint(model)
    adapters = {}
    for r in resolutions:
        rel = f"{ADAPTERS_DIR}/r{r}"
        cfg = _write_adapter(model, folder / rel, r, base, architecture)
        adapters[str(r)] = {"path": rel, **cfg["plan"], "tensors": cfg["tensors"]}
    summary = {"architecture": architecture, "trunk_fingerprint": base, "adapters": adapters,
               "trunk_parameters": sum(t.numel() for t in model.trunk_state_dict().values()),
               "trunk_bytes": _nbytes(model.trunk_state_dict())}
    if not adapters_only:
        _write_model_files(model, folder, resolutions, classifier, metrics, license, summary)
    if model_card:
        card = _model_card(model, summary, adapters_only, metrics, license, repo_id)
        (folder / CARD_NAME).write_text(card, encoding="utf-8")
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _write_model_files(model: BTNet, folder: Path, resolutions: list[int], classifier: bool,
                       metrics: Mapping[str, Any] | None, license: str | None, summary: dict[str, Any]) -> None:
    keep = tuple(f"branches.{r}." for r in resolutions)
    state = {k: v for k, v in model.state_dict().items()
             if k.startswith(("trunk.", "head.")) or k.startswith(keep)}
    files = {WEIGHTS_NAME: _write_safetensors(folder / WEIGHTS_NAME, state)}
    head = None
    if classifier and model.classifier is not None:
        tensors = {f"classifier.{k}": v for k, v in model.classifier.state_dict().items()}
        files[CLASSIFIER_NAME] = _write_safetensors(folder / CLASSIFIER_NAME, tensors)
        head = {"num_classes": model.num_classes, "margin": model.config()["margin"], "file": CLASSIFIER_NAME}
    args = {**model.config(), "resolutions": resolutions, "num_classes": 0}
    config = {
        "architecture": summary["architecture"],
        "num_classes": 0,
        "num_features": model.embed_dim,
        "pretrained_cfg": _pretrained_cfg(model, license),
        "model_args": _jsonable(args),
        "btnet": {
            "format_version": FORMAT_VERSION,
            "library_version": _library_version(),
            "input_size": model.input_size,
            "resolutions": resolutions,
            "embed_dim": model.embed_dim,
            "routing": dict(DEFAULT_ROUTING),
            "resize": model.resize_spec.to_dict(),
            "trunk_fingerprint": summary["trunk_fingerprint"],
            "files": files,
            "adapters": summary["adapters"],
            "classifier": head,
            "metrics": _jsonable(dict(metrics)) if metrics else None,
        },
    }
    _write_json(folder / CONFIG_NAME, config)


def _place(staging: Path, target: Path, written: list[str], overwrite: bool, stale: list[Path]) -> None:
    """Move staged files into ``target`` (atomic per file) and drop ``stale`` artifact files."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return
    for rel in written:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, dest)
    if overwrite:
        for path in stale:
            path.unlink()
            if path.parent != target and not any(path.parent.iterdir()):
                path.parent.rmdir()


def _default_permissions(folder: Path) -> None:
    """Staged files get the permissions of ordinary new files (mkdtemp makes them private)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _conflicts(target: Path, written: list[str]) -> list[str]:
    return [rel for rel in written if (target / rel).exists()]


def _stale_adapters(target: Path, resolutions: list[int]) -> list[Path]:
    """Adapter files of resolutions not being written (they would not match the new trunk)."""
    keep = {f"r{r}" for r in resolutions}
    folder = target / ADAPTERS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for sub in folder.iterdir() if sub.is_dir() and sub.name not in keep
                  for p in (sub / ADAPTER_CONFIG_NAME, sub / ADAPTER_WEIGHTS_NAME) if p.is_file())


def write_folder(target: str | os.PathLike, write: Callable[[Path], list[str]], *, overwrite: bool = False,
                 stale: Callable[[], list[Path]] = list) -> Path:
    """Fill ``target`` safely: ``write(staging)`` writes files into a private staging folder next
    to it and returns their relative paths; they are then moved in (atomically per file, or the
    whole folder when ``target`` is new). Existing files are only replaced with ``overwrite``
    (``stale()`` lists extra files to delete then); on any error ``target`` is untouched."""
    target = Path(target).expanduser()
    if target.exists() and not target.is_dir():
        raise ArtifactExistsError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        written = write(staging)
        _default_permissions(staging)
        if target.exists():
            clash = _conflicts(target, written)
            if clash and not overwrite:
                raise ArtifactExistsError(
                    f"{target} already holds {clash[:6]}{'…' if len(clash) > 6 else ''}; pass overwrite=True to replace"
                )
        _place(staging, target, written, overwrite, stale() if target.exists() else [])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_pretrained(
    model: BTNet,
    save_directory: str | os.PathLike,
    *,
    resolutions: Sequence[int] | None = None,
    classifier: bool = True,
    adapters_only: bool = False,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
    model_card: bool = True,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a Hub/timm-loadable folder (layout in the module docstring).

    Args:
        model: the BTNet to save.
        save_directory: target folder (created if needed; other files in it are kept).
        resolutions: branches to save (default: all).
        classifier: also save the margin head (when the model has one).
        adapters_only: write only ``adapters/`` (and the card), for publishing adapters alone.
        metrics: numbers for the model card and config, e.g. ``{"CelebA 112&14": {"acc": 0.93}}``.
        license: licence identifier of the weights for the model card (e.g. ``"mit"``).
        model_card: write ``README.md``.
        repo_id: Hub repo id the card's usage snippet names.
        overwrite: replace existing artifact files (stale adapters of other resolutions are
            removed); without it, any clash raises :class:`ArtifactExistsError`.

    Returns:
        The folder.
    """
    wanted = _check_resolutions(model, resolutions)
    if adapters_only and not wanted:
        raise ResolutionError("adapters_only=True needs at least one branch to save")
    return write_folder(
        save_directory,
        lambda folder: _write_artifact(model, folder, wanted, classifier, adapters_only, metrics, license,
                                       model_card, repo_id),
        overwrite=overwrite, stale=lambda: _stale_adapters(Path(save_directory).expanduser(), wanted),
    )


def save_adapter(model: BTNet, save_directory: str | os.PathLike, resolution: int, *, overwrite: bool = False) -> Path:
    """Write one resolution as ``adapter_config.json`` + ``adapter_model.safetensors`` at the
    top of ``save_directory`` (an adapter published alone)."""
    r = _check_resolutions(model, [resolution])[0]

    def write(folder: Path) -> list[str]:
        _write_adapter(model, folder, r, trunk_fingerprint(model), _architecture(model))
        return [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]

    return write_folder(save_directory, write, overwrite=overwrite)


def stage_for_hub(
    model: BTNet,
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    adapters_only: bool = False,
    resolutions: Sequence[int] | None = None,
    classifier: bool = False,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
) -> Path:
    """Build, in a new ``folder``, exactly what :func:`push_to_hub` uploads."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ArtifactExistsError(f"staging folder {folder} is not empty")
    return save_pretrained(model, folder, resolutions=resolutions, classifier=classifier,
                           adapters_only=adapters_only, metrics=metrics, license=license, repo_id=repo_id)


def push_to_hub(
    model: BTNet,
    repo_id: str,
    *,
    private: bool | None = None,
    adapters_only: bool = False,
    resolutions: Sequence[int] | None = None,
    classifier: bool = False,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
) -> str:
    """Upload ``model`` (or only its adapters) to the Hub with ``HfApi.create_repo`` +
    ``upload_folder``; the uploaded folder is :func:`stage_for_hub`'s.

    Returns:
        The commit URL.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="btnet-push-") as tmp:
        folder = stage_for_hub(model, Path(tmp) / "upload", repo_id=repo_id, adapters_only=adapters_only,
                               resolutions=resolutions, classifier=classifier, metrics=metrics, license=license)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        what = "adapters" if adapters_only else "model"
        info = api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload BTNet {what} ({', '.join(f'r{r}' for r in _check_resolutions(model, resolutions))})",
        )
    return str(getattr(info, "commit_url", info))


# --------------------------------------------------------------------------- model card
def _intervals(resolutions: Sequence[int], strategy: str, indicator: str) -> dict[int, str]:
    from .routing import select_resolutions

    top = max(resolutions)
    sizes = [(v, v) for v in range(1, 2 * top + 1)]
    chosen = select_resolutions(sizes, resolutions, indicator, strategy)
    out = {}
    for r in resolutions:
        values = [v for (v, _), c in zip(sizes, chosen) if c == r]
        if not values:
            out[r] = "never"
        elif r == top:
            out[r] = f"≥ {values[0]}" if values[0] > 1 else "all"
        elif values[0] == 1:
            out[r] = f"≤ {values[-1]}"
        else:
            out[r] = f"{values[0]}–{values[-1]}"
    return out


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            rows += [f"| {name} | {k} | {v} |" for k, v in value.items()]
        else:
            rows.append(f"| {name} | | {value} |")
    return ["| setting | metric | value |", "|---|---|---|", *rows]


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _model_card(model: BTNet, summary: dict[str, Any], adapters_only: bool, metrics: Mapping[str, Any] | None,
                license: str | None, repo_id: str | None) -> str:
    name = repo_id or "path/to/this/folder"
    args = model.config()
    adapters = summary["adapters"]
    res = [int(r) for r in adapters]
    spans = _intervals([*res, model.input_size], DEFAULT_ROUTING["strategy"], DEFAULT_ROUTING["indicator"])
    front = ["---", "library_name: timm", "pipeline_tag: image-feature-extraction",
             "tags:", "- btnet", "- btnet_adapters", "- face-recognition", "- timm"]
    if license:
        front.append(f"license: {license}")
    front.append("---")
    trunk_bytes = summary["trunk_bytes"]
    rows = [f"| {model.input_size} (trunk) | — | {spans[model.input_size]} | {summary['trunk_parameters']:,} | "
            f"{_mb(trunk_bytes)} | 100 % |"]
    for r in res:
        t = adapters[str(r)]["tensors"]
        rows.append(f"| {r} | `{adapters[str(r)]['implant']}` | {spans[r]} | {t['parameters']:,} | "
                    f"{_mb(t['bytes'])} | {100 * t['bytes'] / trunk_bytes:.1f} % |")
    kind = "adapters for a BTNet trunk" if adapters_only else "a BTNet face recognizer"
    lines = [
        *front, "",
        f"# {repo_id or 'BTNet'}", "",
        f"This repository holds {kind} (Branch-to-Trunk network, BMVC 2023): one trunk at "
        f"{model.input_size}×{model.input_size} and one small branch per low resolution, implanted into "
        f"the trunk's feature pyramid. Backbone `{args['backbone']}`, {model.embed_dim}-d embeddings, "
        f"timm architecture `{summary['architecture']}`.", "",
        "## Resolutions", "",
        f"Images are routed by the `{DEFAULT_ROUTING['indicator']}` of width and height with the "
        f"`{DEFAULT_ROUTING['strategy']}` strategy; each adapter stores only its own tensors "
        "(resolution-specific layers and per-resolution normalisation state).", "",
        "| resolution | implant point | image side (px) | parameters | size | of trunk |",
        "|---|---|---|---|---|---|", *rows, "",
        f"Trunk fingerprint: `{summary['trunk_fingerprint']}`. Resize: `{model.resize_spec.to_dict()}`.", "",
        "## Usage", "", "```python", "import timm", "import btnet_adapters  # registers the btnet_* models",
        "from btnet_adapters import BTNet", "",
    ]
    if adapters_only:
        lines += ["model = BTNet.from_pretrained(\"<base model>\")  # the trunk these adapters were trained on",
                  *(f"model.load_adapter(\"{name}\", resolution={r})" for r in res)]
    else:
        lines += [f"model = BTNet.from_pretrained(\"{name}\")", f"model = timm.create_model(\"hf-hub:{name}\", pretrained=True)",
                  "embeddings = model.embed(face_crops)  # any size; L2-normalised"]
    lines += ["```", ""]
    if metrics:
        lines += ["## Results", "", *_metrics_table(metrics), ""]
    lines += ["## Licence", "", f"Weights licence: {license or 'not specified by the uploader'}. "
              "Code: btnet_adapters (MIT).", "",
              "## Citation", "", "H. He, W. Yuan, Y. Huang, S. Zhao, W. Yuan, H. Li. *Learning Unified Representations "
              "for Multi-Resolution Face Recognition* (BTNet). BMVC 2023. arXiv:2310.09563.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading
def _resolve(src: str | os.PathLike, patterns: list[str], revision: str | None, cache_dir: str | os.PathLike | None,
             token: str | None) -> tuple[Path, str, str | None]:
    """(local folder, description, hub repo id or None) for a directory or a Hub repo id."""
    path = Path(src).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ConfigError(f"revision={revision!r} applies to Hub repo ids, not to the local directory {path}")
        return path, str(path), None
    if path.exists():
        raise ArtifactError(f"{path} is a file; give the folder that holds it, or a Hub repo id")
    repo_id = str(src)
    if not _REPO_ID.fullmatch(repo_id):
        raise ArtifactError(f"{repo_id!r} is neither an existing directory nor a Hub repo id ('org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
    )

    where = f"{repo_id}@{revision or 'main'}"
    try:
        folder = snapshot_download(repo_id=repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                                   token=token)
    except (EntryNotFoundError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled) as err:
        raise ArtifactError(
            f"{repo_id!r} is not a local directory, and the Hub repo {where} could not be read from the "
            f"Hub or its cache: {type(err).__name__}: {err}"
        ) from err
    return Path(folder), f"Hub repo {where}", repo_id


def _btnet_section(config: Mapping[str, Any], origin: str) -> dict[str, Any]:
    section = config.get("btnet")
    if not isinstance(section, dict):
        raise ArtifactError(f"{origin} is not a BTNet artifact: its config.json has no 'btnet' section")
    _check_version(section, f"config.json of {origin}")
    if not isinstance(config.get("model_args"), dict) or "backbone" not in config["model_args"]:
        raise ArtifactError(f"config.json of {origin} has no model_args with a backbone")
    return section


def _wanted(resolutions: Sequence[int] | None, available: list[int], origin: str) -> list[int]:
    if resolutions is None:
        return available
    wanted = sorted({int(r) for r in resolutions})
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ArtifactError(f"{origin} has no adapter for resolution(s) {missing}; it holds {available}")
    return wanted


def _load_weights(model: BTNet, path: Path, origin: str) -> None:
    expected = model.state_dict()
    tensors, names = _read_safetensors(path, f"{WEIGHTS_NAME} of {origin}", set(expected))
    missing = sorted(set(expected) - names)
    loaded = {k.split(".")[1] for k in expected if k.startswith("branches.")}
    unexpected = sorted(n for n in names - set(expected)  # other saved resolutions are skipped
                        if not (n.startswith("branches.") and n.split(".")[1] not in loaded))
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in tensors.items() if v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ArtifactError(
            f"{WEIGHTS_NAME} of {origin} does not fit the model its config.json describes: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    model.load_state_dict(tensors, strict=True)


def _load_classifier(model: BTNet, root: Path, section: Mapping[str, Any], origin: str) -> None:
    head = section.get("classifier")
    if not head:
        raise ArtifactError(f"{origin} holds no classifier (saved without one); load with classifier=False")
    path = _inside(root, head["file"], "classifier file")
    _verify_file(path, section.get("files", {}).get(head["file"]), f"classifier of {origin}")
    tensors, _ = _read_safetensors(path, f"classifier of {origin}")
    model.reset_classifier(int(head["num_classes"]), head["margin"])
    try:
        model.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in tensors.items()})
    except RuntimeError as err:
        raise ArtifactError(f"the classifier of {origin} does not fit its recorded size: {err}") from err


def from_pretrained(
    src: str | os.PathLike,
    resolutions: Sequence[int] | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    classifier: bool = False,
    token: str | None = None,
    model_cls: type[BTNet] | None = None,
) -> BTNet:
    """Load a BTNet saved by :func:`save_pretrained` from a folder or a Hub repo id.

    Repo ids go through ``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_OFFLINE`` and
    ``HF_HUB_CACHE`` apply); only JSON and safetensors files are fetched.

    Args:
        src: local folder or Hub repo id (``"org/name"``).
        resolutions: branches to load (default: every saved one); unknown ones are an error.
        revision: Hub branch, tag or commit.
        cache_dir: Hub cache folder (default: ``HF_HUB_CACHE``).
        force: load even if a weight file's recorded trunk fingerprint differs (with a warning).
        classifier: also load the margin head (for branch training).
        token: Hub token for private repos.
        model_cls: the class to build (a BTNet subclass; default :class:`BTNet`).

    Returns:
        The model in eval mode.
    """
    from .model import BTNet

    files = [CONFIG_NAME, WEIGHTS_NAME, *([CLASSIFIER_NAME] if classifier else [])]
    root, origin, repo_id = _resolve(src, files, revision, cache_dir, token)
    config = _read_json(root / CONFIG_NAME, f"config.json of {origin}")
    section = _btnet_section(config, origin)
    adapters = section.get("adapters") or {}
    wanted = _wanted(resolutions, [int(r) for r in section.get("resolutions", [])], origin)
    args = {**config["model_args"], "resolutions": wanted, "num_classes": 0}
    try:
        model = (model_cls or BTNet)(**args)
        for r in wanted:  # a branch added with its own specific modules is rebuilt that way
            specific = list(adapters[str(r)]["specific"])
            if list(model.branches[str(r)].plan.specific) != specific:
                model.remove_branch(r)
                model.add_branch(r, specific=specific)
    except (BTNetError, KeyError, TypeError) as err:
        raise ArtifactError(f"cannot rebuild the model described by {origin}: {type(err).__name__}: {err}") from err
    _verify_file(root / WEIGHTS_NAME, section.get("files", {}).get(WEIGHTS_NAME), f"{WEIGHTS_NAME} of {origin}")
    _load_weights(model, root / WEIGHTS_NAME, origin)
    recorded, actual = section.get("trunk_fingerprint"), trunk_fingerprint(model)
    if recorded != actual:
        _fingerprint_problem(f"the trunk loaded from {origin} has fingerprint {actual}, its config.json records {recorded}",
                             force, stacklevel=3)
    if classifier:
        _load_classifier(model, root, section, origin)
    cfg = {**model.pretrained_cfg, **{k: _tuples(v) for k, v in (config.get("pretrained_cfg") or {}).items()}}
    cfg.update(architecture=config.get("architecture"), hf_hub_id=repo_id)
    model.pretrained_cfg = model.default_cfg = cfg
    return model.eval()


def _fingerprint_problem(message: str, force: bool, stacklevel: int) -> None:
    if not force:
        raise FingerprintMismatchError(f"{message}; pass force=True to load anyway")
    warnings.warn(f"{message}; loading anyway (force=True)", stacklevel=stacklevel + 1)


def _adapter_folder(root: Path, resolution: int | None, subfolder: str | None, origin: str) -> Path:
    if subfolder is not None:
        folder = _inside(root, subfolder, "adapter subfolder")
        if not (folder / ADAPTER_CONFIG_NAME).is_file():
            raise ArtifactError(f"{origin} has no {ADAPTER_CONFIG_NAME} in {subfolder!r}")
        return folder
    found = sorted(int(p.parent.name[1:]) for p in (root / ADAPTERS_DIR).glob(f"r*/{ADAPTER_CONFIG_NAME}")
                   if p.parent.name[1:].isdigit())
    if resolution is not None and resolution in found:
        return root / ADAPTERS_DIR / f"r{resolution}"
    if (root / ADAPTER_CONFIG_NAME).is_file():
        return root
    if resolution is None and len(found) == 1:
        return root / ADAPTERS_DIR / f"r{found[0]}"
    if resolution is None and found:
        raise ArtifactError(f"{origin} holds adapters for {found}; choose one with resolution=")
    raise ArtifactError(
        f"{origin} has no adapter for resolution {resolution}"
        + (f"; it holds adapters for {found}" if found else f" (no {ADAPTER_CONFIG_NAME} found)")
    )


def _check_adapter(model: BTNet, config: Mapping[str, Any], resolution: int | None, what: str, force: bool) -> int:
    if config.get("format") != _ADAPTER_KIND:
        raise ArtifactError(f"{what} is not a BTNet adapter config (format {config.get('format')!r})")
    _check_version(config, what)
    r = int(config["resolution"])
    if resolution is not None and r != int(resolution):
        raise ArtifactError(f"{what} is the adapter for resolution {r}, not {resolution}")
    if int(config.get("input_size", -1)) != model.input_size:
        raise ArtifactError(f"{what} was made for input size {config.get('input_size')}, the model's is {model.input_size}")
    base = config.get("base_model") or {}
    theirs, ours = base.get("model_args") or {}, _structure(model.config())
    diff = {k: (theirs.get(k), ours[k]) for k in STRUCTURE_KEYS if theirs.get(k) != ours[k]}
    ours_fp = trunk_fingerprint(model)
    # Arguments spelled differently (a default given explicitly) are fine when the trunk is the
    # very one the adapter was trained on: same parameter names, shapes and values.
    if diff and base.get("trunk_fingerprint") != ours_fp:
        raise ArtifactError(
            f"{what} was made for another trunk architecture ({base.get('architecture')}); differences "
            f"(adapter, model): {diff}"
        )
    if base.get("trunk_fingerprint") != ours_fp:
        _fingerprint_problem(
            f"{what} was trained on trunk {base.get('trunk_fingerprint')}, but this model's trunk is {ours_fp}", force,
            stacklevel=4)
    return r


def load_adapter(
    model: BTNet,
    src: str | os.PathLike,
    resolution: int | None = None,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    token: str | None = None,
) -> int:
    """Load one resolution's adapter into ``model`` (adding or replacing that branch).

    ``src`` is a folder or Hub repo id holding either ``adapters/r{r}/`` (a full artifact or an
    adapters-only upload) or ``adapter_config.json`` at its top (an adapter published alone).
    The adapter must have been made for this trunk architecture; a different trunk fingerprint
    is refused unless ``force=True``. On any error the model is left as it was.

    Returns:
        The loaded resolution.
    """
    patterns = [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
    patterns.append(f"{ADAPTERS_DIR}/r{int(resolution)}/*" if resolution is not None else f"{ADAPTERS_DIR}/*")
    if subfolder is not None:
        _inside(Path("."), subfolder, "adapter subfolder")
        patterns.append(f"{subfolder.strip('/')}/*")
    root, origin, _ = _resolve(src, patterns, revision, cache_dir, token)
    folder = _adapter_folder(root, None if resolution is None else int(resolution), subfolder, origin)
    what = f"adapter {folder.relative_to(root).as_posix() or '.'} of {origin}"
    config = _read_json(folder / ADAPTER_CONFIG_NAME, what)
    r = _check_adapter(model, config, resolution, what, force)
    weights = folder / ADAPTER_WEIGHTS_NAME
    _verify_file(weights, config.get("file"), what)
    tensors, _ = _read_safetensors(weights, what)
    _install_branch(model, r, tensors, config.get("plan") or {}, what)
    return r


def _install_branch(model: BTNet, r: int, tensors: dict[str, torch.Tensor], plan: Mapping[str, Any], what: str) -> None:
    key = str(r)
    old = model.branches[key] if key in model.branches else None
    specific = list(plan.get("specific", []))
    try:
        if old is None or list(old.plan.specific) != specific:
            if old is not None:
                model.remove_branch(r)
            model.add_branch(r, specific=specific)
        implant = model.branches[key].plan.implant
        if plan.get("implant") not in (None, implant):
            raise ArtifactError(f"{what} implants at {plan.get('implant')}, this model's branch {r} at {implant}")
        model.load_branch_state_dict(r, tensors, strict=True)
    except (BTNetError, RuntimeError) as err:
        if old is not None:
            model.branches[key] = old
        elif key in model.branches:
            model.remove_branch(r)
        if isinstance(err, ArtifactError):
            raise
        raise ArtifactError(f"{what} does not fit the model: {err}") from err


# --------------------------------------------------------------------------- mixin
class HubMixin:
    """Hub methods for :class:`~btnet_adapters.model.BTNet` (``class BTNet(HubMixin, nn.Module)``)."""

    @classmethod
    def from_pretrained(
        cls,
        src: str | os.PathLike,
        resolutions: Sequence[int] | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force: bool = False,
        classifier: bool = False,
        token: str | None = None,
    ) -> BTNet:
        """Load a saved BTNet from a folder or Hub repo id (see :func:`from_pretrained`)."""
        return from_pretrained(src, resolutions, revision=revision, cache_dir=cache_dir, force=force,
                               classifier=classifier, token=token, model_cls=cls)

    # The module functions take the model first, so they serve as methods unchanged.
    save_pretrained = save_pretrained
    save_adapter = save_adapter
    push_to_hub = push_to_hub
    load_adapter = load_adapter


# --------------------------------------------------------------------------- command line
def register(subparsers: Any) -> None:
    """Add ``btnet push`` to the ``btnet`` command."""
    from .cli import _ints

    p = subparsers.add_parser("push", help="upload a saved BTNet (or only its adapters) to the Hugging Face Hub")
    p.add_argument("src", help="folder written by save_pretrained (its metrics and licence are kept)")
    p.add_argument("repo_id", help="target Hub repo, e.g. me/btnet-mfn")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--adapters-only", action="store_true", help="upload only adapters/ and a model card")
    p.add_argument("--resolutions", type=_ints, default=None, help="adapters to upload, e.g. 7,14 (default: all)")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.set_defaults(func=_cmd_push)


def _cmd_push(args: Any) -> int:
    folder = Path(args.src).expanduser()
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder written by save_pretrained")
    config = _read_json(folder / CONFIG_NAME, f"config.json of {folder}")
    section = config.get("btnet") or {}
    model = from_pretrained(folder, args.resolutions)
    try:
        url = push_to_hub(model, args.repo_id, private=args.private or None, adapters_only=args.adapters_only,
                          metrics=section.get("metrics"), license=(config.get("pretrained_cfg") or {}).get("license"),
                          token=args.token)
    except OSError as err:  # huggingface_hub's HTTP and offline errors
        print(f"btnet push: {type(err).__name__}: {err}")
        return 2
    print(url)
    return 0
