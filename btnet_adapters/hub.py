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

Only JSON and safetensors are ever read from an artifact, never pickles. A save replaces the
folder as a whole (:func:`write_folder`): readers see the old complete folder or the new one,
a killed save leaves nothing half-done behind, and existing files are only replaced with
``overwrite=True`` (other files in the folder are kept). The module imports
torch lazily: the ONNX runtime path (:mod:`btnet_adapters.export`) shares its file helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from ._json import jsonable
from ._atomic import interrupted_backup, mirror_folder, staging_folder, swap_folder
from ._untrusted import (
    MAX_EMBED_DIM,
    MAX_INPUT_SIZE,
    MAX_NUM_CLASSES,
    ResourceLimitError,
    TensorInfo,
    UnsafeArgumentError,
    check_limit,
    check_resolution_list,
    check_model_args,
    init_parameters,
    read_json_file,
    read_safetensors_header,
)
from .errors import BTNetError, ConfigError, OutputExistsError, ResolutionError

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
    "ArtifactLimitError",
    "FingerprintMismatchError",
    "HubMixin",
    "UnsafeArtifactError",
    "artifact_source",
    "check_saved_model_args",
    "fingerprint",
    "from_pretrained",
    "load_adapter",
    "load_artifact_weights",
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
#: Model arguments that decide the trunk's structure (an adapter needs them equal once
#: normalised: defaults filled in, tuples as lists; see :func:`_normalised_structure`).
STRUCTURE_KEYS = ("backbone", "input_size", "embed_dim", "head", "remove", "backbone_kwargs")
DEFAULT_ROUTING = {"indicator": "max", "strategy": "ceil"}
#: Parts of a model card a saver may write instead of the generic text (``save_pretrained(card_sections=)``).
CARD_SECTIONS = ("title", "usage", "training_data")
_ADAPTER_KIND = "btnet-adapter"
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
# pretrained_cfg keys that describe where weights came from, not the weights themselves.
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag")


class ArtifactError(ConfigError):
    """A saved model or adapter is missing, corrupted, from a newer format or does not fit."""


class FingerprintMismatchError(ArtifactError):
    """An adapter was trained on another trunk (both fingerprints are named)."""


class UnsafeArtifactError(ArtifactError, UnsafeArgumentError):
    """A saved config asks for something loading never does: an argument that loads a file,
    downloads or names weights, or one the model does not take (the key and why are named)."""


class ArtifactLimitError(ArtifactError, ResourceLimitError):
    """A size a saved file declares is beyond a documented limit of :mod:`btnet_adapters._untrusted`
    (value, limit and what is accepted are named); it was refused before anything was allocated."""


class ArtifactExistsError(OutputExistsError):
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
    from ._version import __version__

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
    """A JSON object of at most ``MAX_JSON_BYTES`` (the size is checked before reading)."""
    data = read_json_file(path, what, ArtifactError, ArtifactLimitError)
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} ({path}) must hold a JSON object, got {type(data).__name__}")
    return data


def check_format_version(section: Mapping[str, Any], what: str, supported: int = FORMAT_VERSION) -> int:
    """The ``format_version`` of a config or manifest, refused (:class:`ArtifactError`) when it
    is missing or newer than the ``supported`` one this library reads."""
    version = section.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{what} has no valid format_version (got {version!r})")
    if version > supported:
        raise ArtifactError(
            f"{what} uses format version {version}, written by btnet_adapters "
            f"{section.get('library_version', '?')}; this btnet_adapters ({_library_version()}) reads "
            f"format versions up to {supported}: upgrade btnet_adapters"
        )
    return version


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


def _safetensors_header(path: Path, what: str) -> dict[str, TensorInfo]:
    """Every tensor the file declares, checked against the file's size before it is mapped."""
    if not path.is_file():
        raise ArtifactError(f"{what} is missing: {path}")
    return read_safetensors_header(path, what, ArtifactError, ArtifactLimitError)


def _read_safetensors(path: Path, what: str, keys: set[str] | None = None) -> tuple[dict[str, torch.Tensor], set[str]]:
    """(tensors named in ``keys`` or all, every name in the file); the header is read and checked
    against the file's size first (:func:`_safetensors_header`)."""
    _safetensors_header(path, what)
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


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples timm configs use."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# --------------------------------------------------------------------------- architecture
def _architecture(model: BTNet) -> str:
    """The timm name that rebuilds ``model`` from ``model_args`` (zoo entry or the generic one)."""
    import timm

    from ._zoo_table import ZOO

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
    cfg = {k: jsonable(v) for k, v in (model.pretrained_cfg or {}).items()
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
    """The :data:`STRUCTURE_KEYS` of ``model_args`` as given (what an adapter's ``base_model`` records)."""
    return {k: jsonable(model_args.get(k)) for k in STRUCTURE_KEYS}


def _plain_json(value: Any) -> bool:
    """Whether a parameter default is plain JSON: ``None``, a bool, number or string, or lists of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_plain_json(v) for v in value)


def _keywords_set_by(fn: Any, depth: int = 0, seen: set[Any] | None = None) -> set[str]:
    """Names that a timm entry point, or a same-module helper it calls, passes as keywords itself
    (``layers=``, ``channels=``, ``channel_multiplier=`` of a variant): there the class's default is
    not the variant's, so it is never filled in. Any tuple of strings counts (an over-estimate,
    which only leaves more arguments compared as given)."""
    import types

    seen = set() if seen is None else seen
    code = getattr(fn, "__code__", None)
    if code is None or depth > 4 or fn in seen:
        return set()
    seen.add(fn)
    names: set[str] = set()
    codes = [code]
    while codes:
        current = codes.pop()
        for const in current.co_consts:
            if isinstance(const, types.CodeType):
                codes.append(const)
            elif isinstance(const, tuple) and all(isinstance(c, str) for c in const):
                names.update(const)
        for name in current.co_names:
            obj = fn.__globals__.get(name)
            if isinstance(obj, types.FunctionType) and obj.__module__ == fn.__module__:
                names |= _keywords_set_by(obj, depth + 1, seen)
    return names


def _backbone_defaults(backbone: Any) -> dict[str, Any]:
    """The JSON defaults of the arguments the timm entry point ``backbone`` passes on to its model
    (:func:`btnet_adapters._untrusted.backbone_parameters`) and does not set itself; ``{}`` for
    a backbone timm does not know."""
    from timm.models import model_entrypoint

    from ._untrusted import LOADING_ARGUMENTS, backbone_parameters

    if not isinstance(backbone, str):
        return {}
    try:
        params = backbone_parameters(backbone)
        fixed = _keywords_set_by(model_entrypoint(backbone))
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError):
        return {}
    return {name: jsonable(p.default) for name, p in params.items()
            if name not in fixed and name not in LOADING_ARGUMENTS and _plain_json(p.default)}


def _normalised_structure(model_args: Mapping[str, Any], model_cls: type) -> dict[str, Any]:
    """:func:`_structure` as the architecture it builds, to compare two records of one trunk.

    An argument left out (``None``) takes its default in ``model_cls.__init__`` (BTNet's), and
    ``backbone_kwargs`` are completed with the defaults of the backbone's entry point
    (:func:`_backbone_defaults`), so a default spelled out equals one left out; tuples are lists.
    Arguments naming where weights come from (``pretrained``, ``checkpoint_path``, …
    :data:`~btnet_adapters._untrusted.LOADING_ARGUMENTS`) are dropped: the trunk fingerprint covers
    the weights. Not filled in, so compared as given: defaults that are not plain JSON (layer
    classes) and arguments an entry point sets itself (timm ``resnet50``'s ``layers``).
    """
    from ._untrusted import LOADING_ARGUMENTS

    out = _structure(model_args)
    own = init_parameters(model_cls)
    for key, value in out.items():
        default = getattr(own.get(key), "default", None)
        if value is None and key != "backbone_kwargs" and default is not None and _plain_json(default):
            out[key] = jsonable(default)
    kwargs = {} if out["backbone_kwargs"] is None else out["backbone_kwargs"]
    if isinstance(kwargs, dict):
        kwargs = {**_backbone_defaults(out["backbone"]),
                  **{k: v for k, v in kwargs.items() if k not in LOADING_ARGUMENTS}}
        if out["head"] != "backbone" and "num_classes" in kwargs:
            kwargs["num_classes"] = 0  # BTNet's own head: the backbone is always built without classes
        kwargs = dict(sorted(kwargs.items()))
    out["backbone_kwargs"] = kwargs
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: lists and tuples alike, ``1 == 1.0``, but ``true != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _structure_diff(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """What differs between two :func:`_normalised_structure` records, as ``"key: adapter …, model …"``
    lines: ``backbone_kwargs`` per argument, and not at all between two backbones (whose
    arguments do not compare)."""

    def text(record: Mapping[str, Any], key: str) -> str:
        return f"{record[key]!r:.200}" if key in record else "not given"

    lines = []
    for key in STRUCTURE_KEYS:
        a, b = theirs.get(key), ours.get(key)
        if key == "backbone_kwargs" and not _same(theirs.get("backbone"), ours.get("backbone")):
            continue
        if key == "backbone_kwargs" and isinstance(a, dict) and isinstance(b, dict):
            lines += [f"{key}.{k}: adapter {text(a, k)}, model {text(b, k)}" for k in sorted(set(a) | set(b), key=str)
                      if k not in a or k not in b or not _same(a[k], b[k])]
        elif not _same(a, b):
            lines.append(f"{key}: adapter {a!r:.200}, model {b!r:.200}")
    return lines


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
                    base_fingerprint: str, architecture: str, base_repo: str | None = None) -> dict[str, Any]:
    """``adapter_config.json``. ``base_model`` identifies the trunk: its architecture, structural
    arguments and fingerprint, and ``repo_id``, the Hub repo that holds it when one is known
    (:func:`_base_repo_id`: the repo a full save is pushed to, or the one the model came from)."""
    return {
        "format": _ADAPTER_KIND,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "resolution": resolution,
        "input_size": model.input_size,
        "base_model": {
            "architecture": architecture,
            "repo_id": base_repo if base_repo is not None else _base_repo_id(model, None, True),
            "model_args": _structure(model.config()),
            "trunk_fingerprint": base_fingerprint,
        },
        "plan": _plan_record(model, resolution),
        "resize": model.resize_spec.to_dict(),
        "routing": dict(DEFAULT_ROUTING),
        "tensors": {"count": len(tensors), "parameters": sum(t.numel() for t in tensors.values()),
                    "bytes": _nbytes(tensors), "fingerprint": fingerprint(tensors)},
    }


def _write_adapter(model: BTNet, folder: Path, resolution: int, base_fingerprint: str, architecture: str,
                   base_repo: str | None = None) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = model.branch_state_dict(resolution)
    config = _adapter_config(model, resolution, tensors, base_fingerprint, architecture, base_repo)
    config["file"] = _write_safetensors(folder / ADAPTER_WEIGHTS_NAME, tensors)
    _write_json(folder / ADAPTER_CONFIG_NAME, config)
    return config


def _write_artifact(model: BTNet, folder: Path, resolutions: list[int], classifier: bool, adapters_only: bool,
                    metrics: Mapping[str, Any] | None, license: str | None, model_card: bool,
                    repo_id: str | None, card_sections: Mapping[str, str] | None = None) -> list[str]:
    """Write every file of the artifact into an empty ``folder``; return their relative paths."""
    architecture = _architecture(model)
    base = trunk_fingerprint(model)
    adapters = {}
    for r in resolutions:
        rel = f"{ADAPTERS_DIR}/r{r}"
        cfg = _write_adapter(model, folder / rel, r, base, architecture, _base_repo_id(model, repo_id, adapters_only))
        adapters[str(r)] = {"path": rel, **cfg["plan"], "tensors": cfg["tensors"]}
    summary = {"architecture": architecture, "trunk_fingerprint": base, "adapters": adapters,
               "trunk_parameters": sum(t.numel() for t in model.trunk_state_dict().values()),
               "trunk_bytes": _nbytes(model.trunk_state_dict())}
    if not adapters_only:
        _write_model_files(model, folder, resolutions, classifier, metrics, license, summary)
    if model_card:
        card = _model_card(model, summary, adapters_only, metrics, license, repo_id, card_sections)
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
        "model_args": jsonable(args),
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
            "metrics": jsonable(dict(metrics)) if metrics else None,
        },
    }
    _write_json(folder / CONFIG_NAME, config)


def _conflicts(target: Path, written: list[str]) -> list[str]:
    """Written paths that exist in ``target`` (or whose folder is a file there)."""
    clash = []
    for rel in written:
        parts = PurePosixPath(rel).parts
        if os.path.lexists(target / rel) or any(target.joinpath(*parts[:i]).is_file() for i in range(1, len(parts))):
            clash.append(rel)
    return clash


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
    """Fill ``target`` safely, replacing the folder as a whole.

    ``write(staging)`` writes the new files into an empty staging folder next to ``target``
    (``.<name>.btnet-staging-<pid>-<tag>``) and returns their relative paths. When ``target``
    exists, the staging folder then receives every other entry of it (hard links, or copies),
    except, with ``overwrite``, the files ``stale()`` lists; and the two folders are swapped
    (:func:`btnet_adapters._atomic.swap_folder`). Readers see the old complete folder or the new
    one, never a mix; on any error before the swap ``target`` is untouched. Existing files are
    only replaced with ``overwrite``; without it any clash raises :class:`ArtifactExistsError`.
    Leftovers of killed saves into the same parent folder are cleaned up first (a backup left
    by a save killed between its two renames is restored, see
    :func:`btnet_adapters._atomic.recover_leftovers`).
    """
    given = Path(target).expanduser()
    target = Path(os.path.realpath(given))  # a symlinked folder is replaced where it really is
    with staging_folder(target) as staging:
        if os.path.lexists(target) and not target.is_dir():
            raise ArtifactExistsError(f"{given} exists and is not a directory")
        written = write(staging)
        if target.is_dir():
            clash = _conflicts(target, written)
            if clash and not overwrite:
                raise ArtifactExistsError(
                    f"{given} already holds {clash[:6]}{'…' if len(clash) > 6 else ''}; pass overwrite=True to replace"
                )
            dropped = {Path(p).relative_to(target).as_posix() for p in stale()} if overwrite else set()
            mirror_folder(target, staging, skip=dropped)
        swap_folder(staging, target)
    return given


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
    card_sections: Mapping[str, str] | None = None,
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
        overwrite: replace existing artifact files; a full save also removes the adapters of
            other resolutions (they would not match the new trunk), an ``adapters_only`` save
            keeps them. Without it, any clash raises :class:`ArtifactExistsError`.
        card_sections: text that replaces generic parts of the card: ``"title"`` (its heading),
            ``"usage"`` (markdown body of the Usage section) and ``"training_data"`` (of Training
            data: the dataset, its licence, who is in it and who is not, the recipe).

    The folder is replaced as a whole (:func:`write_folder`): a reader, or a save that is
    killed, never leaves a mix of old and new files.

    Returns:
        The folder.
    """
    wanted = _check_resolutions(model, resolutions)
    if adapters_only and not wanted:
        raise ResolutionError("adapters_only=True needs at least one branch to save")
    unknown = sorted(set(card_sections or {}) - set(CARD_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown card_sections {unknown}; accepted: {list(CARD_SECTIONS)}")
    return write_folder(
        save_directory,
        lambda folder: _write_artifact(model, folder, wanted, classifier, adapters_only, metrics, license,
                                       model_card, repo_id, card_sections),
        overwrite=overwrite,
        stale=list if adapters_only else lambda: _stale_adapters(Path(os.path.realpath(Path(save_directory).expanduser())),
                                                                 wanted),
    )


def save_adapter(model: BTNet, save_directory: str | os.PathLike, resolution: int, *, overwrite: bool = False) -> Path:
    """Write one resolution as ``adapter_config.json`` + ``adapter_model.safetensors`` at the
    top of ``save_directory`` (an adapter published alone); other files there are kept, and the
    folder is replaced as a whole (:func:`write_folder`)."""
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


def _metric_rows(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str, Any]]:
    """``(setting, metric, value)`` rows of a metrics dict: nested keys up to the last one name the
    setting (``{"CelebA": {"112&14": {"accuracy": 0.93}}}`` → ``("CelebA 112&14", "accuracy", 0.93)``);
    a value at the top level is its own setting with metric ``""``."""
    rows: list[tuple[str, str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix} {key}".strip()
        if isinstance(value, Mapping):
            if value and all(not isinstance(v, Mapping) for v in value.values()):
                rows += [(name, str(k), v) for k, v in value.items()]
            else:
                rows += _metric_rows(value, name)
        else:
            rows.append((name, "", value))
    return rows


def _number(value: Any) -> float | int | None:
    """A finite int/float (numpy scalars included), or ``None`` for anything else."""
    import math

    value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    rows = [f"| {_cell(s)} | {_cell(m)} | {_cell(v)} |" for s, m, v in _metric_rows(metrics)]
    return ["| setting | metric | value |", "|---|---|---|", *rows]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "value"


def _eval_results(metrics: Mapping[str, Any] | None) -> list[Any]:
    """``huggingface_hub.EvalResult`` per numeric metric (the card's ``model-index``)."""
    from huggingface_hub import EvalResult

    results = []
    for setting, metric, value in _metric_rows(metrics or {}):
        number = _number(value)
        if number is None:
            continue  # text, lists, None: in the table only
        results.append(EvalResult(
            task_type="image-feature-extraction", task_name="Face recognition",
            dataset_type=_slug(setting), dataset_name=setting,
            metric_type=_slug(metric or setting), metric_name=metric or setting, metric_value=number))
    return results


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _hub_id(value: Any) -> str | None:
    return value if isinstance(value, str) and _REPO_ID.fullmatch(value) and "/" in value else None


def _base_repo_id(model: BTNet, repo_id: str | None, adapters_only: bool) -> str | None:
    """The Hub repo that holds the trunk the adapters were trained on, for ``adapter_config.json``:
    the repo being pushed to when the trunk goes there too (a full save with ``repo_id``), else the
    repo the model was loaded from (``pretrained_cfg["hf_hub_id"]``), else ``None``."""
    if repo_id and not adapters_only:
        return repo_id
    return _hub_id((model.pretrained_cfg or {}).get("hf_hub_id"))


def _card_base_model(model: BTNet, repo_id: str | None) -> str | None:
    """The card's ``base_model``: the Hub model these weights derive from, when one is known (the
    repo the BTNet was loaded from, or the timm Hub weights its trunk was created with), else
    ``None``. The Hub accepts only model ids there, so an architecture name is never written."""
    loaded = _hub_id((model.pretrained_cfg or {}).get("hf_hub_id"))
    if loaded and loaded != repo_id:
        return loaded
    if (model.config().get("backbone_kwargs") or {}).get("pretrained"):
        trunk = _hub_id((getattr(model.trunk, "pretrained_cfg", None) or {}).get("hf_hub_id"))
        if trunk and trunk != repo_id:
            return trunk
    return None


_INTENDED_USE = [
    "## Intended use", "",
    "- Face embeddings for 1:1 verification and 1:N identification of **aligned face crops of any size**, "
    "in particular low-resolution crops (7–28 px) that would otherwise be up-sampled to the trunk's input size.",
    "- Research on multi-resolution face recognition, e.g. reproducing or extending the BTNet paper.",
    "- Deployments where the people enrolled and searched have consented, or where another legal basis is "
    "documented, and where a person reviews every match before anything happens to anyone.", "",
]
_OUT_OF_SCOPE = [
    "## Out-of-scope use", "",
    "- Surveillance, tracking or identification of people without their knowledge and consent, including "
    "searching crowds, CCTV footage or images scraped from the web.",
    "- Any decision that affects people — law enforcement, border control, access to services, housing, "
    "employment, education, credit — taken on a match without review by a qualified person.",
    "- Practices that the law where you operate restricts or forbids (for example those the EU AI Act "
    "prohibits, such as untargeted scraping of facial images to build recognition databases).",
    "- Inferring anything other than identity similarity (emotion, age, gender, ethnicity, health, …): "
    "the model was not trained for it and its embeddings must not be used that way.", "",
]
_LIMITATIONS = [
    "## Limitations", "",
    "- A low-resolution face carries less identity information: accuracy falls with resolution (see the "
    "results below), and a match at 7–14 px is weak evidence on its own.",
    "- Images are routed by their pixel size. An up-scaled or blurred image goes to a path that expects more "
    "detail than it holds; `embed(..., indicator=\"effective\")` routes by the detail actually present.",
    "- Inputs must be face crops aligned like the training data (ArcFace 5-point template); unaligned or "
    "badly detected faces give unreliable embeddings.",
    "- Similarity scores are not probabilities. Choose a threshold on data like your deployment's, at the "
    "false-match rate you can accept.",
    "- The results below are those passed when the weights were saved; they have not been verified "
    "independently, and do not transfer to other image sources, cameras or populations.", "",
]
_BIAS = [
    "## Bias, risks and privacy", "",
    "- **Demographic differentials.** Face recognition error rates differ between demographic groups "
    "(sex, age, skin tone, country of origin); NIST's evaluation of 189 algorithms (NISTIR 8280, 2019) found "
    "false-match rates differing by factors of 10 to 100 between groups for many of them. This model has "
    "not been evaluated per group, and low resolution can widen such gaps: measure error rates for each "
    "group you serve before any deployment.",
    "- **Consent.** Face images and embeddings identify people. Enrol and search only people who agreed, "
    "or under a documented legal basis; tell them, and let them withdraw.",
    "- **Data protection law.** Embeddings used to identify people are biometric data: under the GDPR "
    "(Art. 9) a special category of personal data, and regulated by laws such as Illinois' BIPA. Store "
    "them as such (purpose limitation, retention limits, access control, a data protection impact "
    "assessment where required).",
    "- **Misidentification harms** fall on the person wrongly matched; keep a human in the loop and a way "
    "to contest a decision.", "",
]


def _usage(name: str, repo_id: str | None, trunk_repo: str | None, fingerprint: str, res: list[int],
           adapters_only: bool) -> list[str]:
    """The card's default usage snippet (markdown lines)."""
    lines = ["```python", "import timm", "import btnet_adapters  # registers the btnet_* models",
             "from btnet_adapters import BTNet", ""]
    if adapters_only:
        base_src = trunk_repo or "path/to/the/base/model"
        lines += [f"model = BTNet.from_pretrained(\"{base_src}\")  # the trunk these adapters were trained on "
                  f"(fingerprint {fingerprint[:19]}…)",
                  *(f"model.load_adapter(\"{name}\", resolution={r})" for r in res)]
    else:
        route = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{name}"
        lines += [f"model = BTNet.from_pretrained(\"{name}\")",
                  f"# or through timm: model = timm.create_model(\"{route}\", pretrained=True)",
                  "embeddings = model.embed(face_crops)  # any size; L2-normalised"]
    return lines + ["```", ""]


def _model_card(model: BTNet, summary: dict[str, Any], adapters_only: bool, metrics: Mapping[str, Any] | None,
                license: str | None, repo_id: str | None, sections: Mapping[str, str] | None = None) -> str:
    """The ``README.md`` of a saved folder / Hub repo: :class:`huggingface_hub.ModelCard` metadata
    (``base_model`` when known, library, tags, licence, ``model-index`` from ``metrics``) and the
    sections intended use, out-of-scope use, limitations, bias/risks/privacy, training data,
    evaluation results, licence and citation."""
    from huggingface_hub import ModelCard, ModelCardData

    name = repo_id or "path/to/this/folder"
    args = model.config()
    architecture = summary["architecture"]
    adapters = summary["adapters"]
    res = [int(r) for r in adapters]
    base_repo = _card_base_model(model, repo_id)
    trunk_repo = _base_repo_id(model, repo_id, adapters_only)
    results = _eval_results(metrics)
    # The Hub takes licence identifiers (mit, cc-by-nc-4.0, …); free text goes under "other".
    identifier = license if license and re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license) else None
    data = ModelCardData(
        base_model=base_repo, library_name="timm", pipeline_tag="image-feature-extraction",
        tags=["btnet", "btnet_adapters", "face-recognition", "timm", architecture, str(args["backbone"])],
        license=identifier or ("other" if license else None),
        license_name=_slug(license) if license and not identifier else None,
        model_name=(repo_id or f"BTNet {architecture}") if results else None, eval_results=results or None,
    )
    spans = _intervals([*res, model.input_size], DEFAULT_ROUTING["strategy"], DEFAULT_ROUTING["indicator"])
    trunk_bytes = summary["trunk_bytes"]
    rows = [f"| {model.input_size} (trunk) | — | {spans[model.input_size]} | {summary['trunk_parameters']:,} | "
            f"{_mb(trunk_bytes)} | 100 % |"]
    for r in res:
        t = adapters[str(r)]["tensors"]
        rows.append(f"| {r} | `{adapters[str(r)]['implant']}` | {spans[r]} | {t['parameters']:,} | "
                    f"{_mb(t['bytes'])} | {100 * t['bytes'] / trunk_bytes:.1f} % |")
    kind = "adapters for a BTNet trunk" if adapters_only else "a BTNet face recognizer"
    base_line = (f"Base model: timm architecture `{architecture}` (backbone `{args['backbone']}`), trunk "
                 f"fingerprint `{summary['trunk_fingerprint']}`"
                 + (f", Hub repo [`{trunk_repo}`](https://huggingface.co/{trunk_repo})" if trunk_repo else "")
                 + (f"; derived from [`{base_repo}`](https://huggingface.co/{base_repo})"
                    if base_repo and base_repo != trunk_repo else "") + ".")
    sections = sections or {}
    lines = [
        f"# {sections.get('title') or repo_id or f'BTNet {architecture}'}", "",
        f"This repository holds {kind} (Branch-to-Trunk network, BMVC 2023): one trunk at "
        f"{model.input_size}×{model.input_size} and one small branch per low resolution, implanted into "
        f"the trunk's feature pyramid. Backbone `{args['backbone']}`, {model.embed_dim}-d embeddings, "
        f"timm architecture `{architecture}`.", "",
        base_line, "",
        "## Resolutions", "",
        f"Images are routed by the `{DEFAULT_ROUTING['indicator']}` of width and height with the "
        f"`{DEFAULT_ROUTING['strategy']}` strategy; each adapter stores only its own tensors "
        "(resolution-specific layers and per-resolution normalisation state).", "",
        "| resolution | implant point | image side (px) | parameters | size | of trunk |",
        "|---|---|---|---|---|---|", *rows, "",
        f"Resize: `{model.resize_spec.to_dict()}`.", "",
        "## Usage", "",
    ]
    if "usage" in sections:
        lines += [sections["usage"].strip(), ""]
    else:
        lines += _usage(name, repo_id, trunk_repo, summary["trunk_fingerprint"], res, adapters_only)
    lines += [*_INTENDED_USE, *_OUT_OF_SCOPE, *_LIMITATIONS, *_BIAS]
    lines += ["## Training data", ""]
    lines += [sections["training_data"].strip(), ""] if "training_data" in sections else [
        "btnet_adapters does not record the training data of the weights it saves: the uploader should "
        "name it here (dataset, version, licence, and how the people shown consented). Branches are "
        "trained by distillation from the frozen trunk on down-sampled copies of face images. Many public "
        "face datasets were collected from the web without the consent of the people in them, and some "
        "(e.g. MS-Celeb-1M, from which MS1MV2/MS1MV3 derive) were withdrawn by their publishers; their "
        "terms may restrict what the weights can be used for.", ""]
    lines += ["## Evaluation results", ""]
    if metrics:
        pairs = any("&" in s for s, _, _ in _metric_rows(metrics))
        lines += ["Metrics of the run that produced these weights, as passed to `save_pretrained` / "
                  "`push_to_hub`" + (" (`r1&r2`: first image at r1 px, second at r2 px)" if pairs else "") + ":", "",
                  *_metrics_table(metrics), ""]
    else:
        lines += ["No evaluation results were recorded with these weights.", ""]
    lines += [
        "## Licence", "",
        f"Weights licence: {license or 'not specified by the uploader (ask before any use)'}. "
        "This is the licence of these weights alone; the btnet_adapters code is MIT-licensed. The weights "
        "may also be bound by the terms of their training data"
        + (f" and of the base model `{base_repo}`" if base_repo else "") + ".", "",
        "## Citation", "",
        "```bibtex",
        "@inproceedings{he2023btnet,",
        "  title     = {Learning Unified Representations for Multi-Resolution Face Recognition},",
        "  author    = {He, H. and Yuan, W. and Huang, Y. and Zhao, S. and Yuan, W. and Li, H.},",
        "  booktitle = {British Machine Vision Conference (BMVC)},",
        "  year      = {2023},",
        "  eprint    = {2310.09563},",
        "  archivePrefix = {arXiv}",
        "}",
        "```", "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


# --------------------------------------------------------------------------- reading
def _resolve(src: str | os.PathLike, patterns: list[str], revision: str | None, cache_dir: str | os.PathLike | None,
             token: str | None, *, hub_only: bool = False, local_only: bool = False) -> tuple[Path, str, str | None]:
    """(local folder, description, hub repo id or None) for a directory or a Hub repo id
    (``hub_only``: never a local directory; ``local_only``: never the Hub)."""
    path = Path(src).expanduser()
    if local_only and not path.is_dir():
        raise ArtifactError(f"{path} is not a directory holding a saved BTNet")
    if path.is_dir() and not hub_only:
        if revision is not None:
            raise ConfigError(f"revision={revision!r} applies to Hub repo ids, not to the local directory {path}")
        return path, str(path), None
    if path.exists() and not hub_only:
        raise ArtifactError(f"{path} is a file; give the folder that holds it, or a Hub repo id")
    backup = None if path.exists() or hub_only else interrupted_backup(path)
    if backup is not None:
        raise ArtifactError(
            f"{path} does not exist: a save into it was killed while swapping folders, and the previous "
            f"folder is intact at {backup}. The next save into {path.parent} restores it, or call "
            f"btnet_adapters._atomic.recover_leftovers({str(path.parent)!r}) (or rename it back by hand)"
        )
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
    """The config's ``btnet`` section, its sizes checked against the documented limits."""
    section = config.get("btnet")
    if not isinstance(section, dict):
        raise ArtifactError(f"{origin} is not a BTNet artifact: its config.json has no 'btnet' section")
    check_format_version(section, f"config.json of {origin}")
    if not isinstance(config.get("model_args"), dict) or "backbone" not in config["model_args"]:
        raise ArtifactError(f"config.json of {origin} has no model_args with a backbone")
    where = f"config.json of {origin}: btnet"
    check_resolution_list(section.get("resolutions", []), f"{where}.resolutions", ArtifactError, ArtifactLimitError)
    for key, limit in (("input_size", MAX_INPUT_SIZE), ("embed_dim", MAX_EMBED_DIM)):
        if section.get(key) is not None:
            check_limit(section[key], limit, f"{where}.{key}", ArtifactLimitError, low=1, accepted=f"1..{limit}")
    for key in ("adapters", "files"):
        if not isinstance(section.get(key) or {}, dict):
            raise ArtifactError(f"{where}.{key} must be a JSON object, got {section[key]!r:.200}")
    return section


def check_saved_model_args(model_args: Any, origin: str) -> dict[str, Any]:
    """Refuse saved BTNet arguments that do more than describe the architecture.

    ``model_args`` (and its ``backbone_kwargs``, checked against the parameters of the timm
    model class the backbone builds) may hold only arguments the classes take, as plain JSON of
    the kind each parameter's default has, within the limits of :mod:`btnet_adapters._untrusted`.
    Anything that loads a file, downloads or names weights (``checkpoint_path``, ``pretrained``,
    ``pretrained_cfg_overlay``, ``file``, ``url``, ``hf_hub_id``, … see
    :data:`btnet_adapters._untrusted.LOADING_ARGUMENTS`) is refused.

    Raises:
        UnsafeArtifactError: a refused or unknown key, or a value of the wrong kind.
        ArtifactLimitError: ``input_size``, ``embed_dim``, ``num_classes``, ``resolutions`` or an
            architecture value beyond its limit.
    """
    return check_model_args(model_args, f"config.json of {origin}: model_args",
                            parameters=init_parameters(_model_class(None)),
                            error=UnsafeArtifactError, limit_error=ArtifactLimitError)


def _wanted(resolutions: Sequence[int] | None, available: list[int], origin: str) -> list[int]:
    if resolutions is None:
        return available
    wanted = sorted({int(r) for r in resolutions})
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ArtifactError(f"{origin} has no adapter for resolution(s) {missing}; it holds {available}")
    return wanted


def _load_weights(model: BTNet, path: Path, origin: str) -> None:
    """Load ``model.safetensors`` strictly (a margin head the model has is not in it and is kept).

    Names and shapes are compared with the model from the file's header before any tensor is
    read; saved branches the model does not hold are skipped unread.
    """
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    what = f"{WEIGHTS_NAME} of {origin}"
    header = _safetensors_header(path, what)
    names = set(header)
    missing = sorted(set(expected) - names)
    loaded = {k.split(".")[1] for k in expected if k.startswith("branches.")}
    unexpected = sorted(n for n in names - set(expected)  # other saved resolutions are skipped
                        if not (n.startswith("branches.") and n.split(".")[1] not in loaded))
    wrong = [f"{k}: file {list(header[k].shape)} vs model {list(expected[k].shape)}"
             for k in sorted(names & set(expected)) if header[k].shape != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ArtifactError(
            f"{what} does not fit the model its config.json describes: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    tensors, _ = _read_safetensors(path, what, set(expected))
    model.load_state_dict(tensors, strict=not any(k.startswith("classifier.") for k in model.state_dict()))


def _load_classifier(model: BTNet, root: Path, section: Mapping[str, Any], origin: str) -> None:
    head = section.get("classifier")
    if not head:
        raise ArtifactError(f"{origin} holds no classifier (saved without one); load with classifier=False")
    where = f"config.json of {origin}: btnet.classifier"
    if not isinstance(head, dict) or not isinstance(head.get("file"), str) or not isinstance(head.get("margin"), str):
        raise ArtifactError(f"{where} must be an object with 'num_classes', 'margin' and 'file', got {head!r:.200}")
    num_classes = check_limit(head.get("num_classes"), MAX_NUM_CLASSES, f"{where}.num_classes", ArtifactLimitError,
                              low=1, accepted=f"1..{MAX_NUM_CLASSES:,} identities")
    path = _inside(root, head["file"], "classifier file")
    files = section.get("files") or {}
    _verify_file(path, files.get(head["file"]), f"classifier of {origin}")
    what = f"classifier of {origin}"
    header = _safetensors_header(path, what)
    weight = header.get("classifier.weight")
    if weight is None or weight.shape != (num_classes, model.embed_dim):
        raise ArtifactError(
            f"{what} ({path}) does not fit its recorded size: classifier.weight is "
            f"{list(weight.shape) if weight else 'missing'}, the config records {num_classes} classes of "
            f"{model.embed_dim}-d embeddings"
        )
    tensors, _ = _read_safetensors(path, what)  # every tensor is inside the checked file
    try:
        model.reset_classifier(num_classes, head["margin"])
        model.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in tensors.items()})
    except (RuntimeError, BTNetError) as err:
        raise ArtifactError(f"the classifier of {origin} does not fit its recorded size: {err}") from err


def _load_artifact(model: BTNet, root: Path, section: Mapping[str, Any], origin: str, force: bool) -> None:
    """Give ``model`` (built from the artifact's checked ``model_args``) the artifact's weights.

    Each branch is rebuilt with the specific modules its adapter records; ``model.safetensors``
    must have its recorded checksum and fit the model (header checked before reading); the
    loaded trunk must have the recorded fingerprint (unless ``force``).
    """
    adapters = section.get("adapters") or {}
    try:
        for r in model.branch_resolutions:  # a branch added with its own specific modules is rebuilt that way
            record = adapters[str(r)]
            specific = record["specific"]
            if not isinstance(specific, list) or not all(isinstance(s, str) for s in specific):
                raise ArtifactError(f"config.json of {origin}: the adapter of {r} records specific modules "
                                    f"{specific!r:.200}; accepted: a list of module names")
            if list(model.branches[str(r)].plan.specific) != specific:
                model.remove_branch(r)
                model.add_branch(r, specific=specific)
    except ArtifactError:
        raise
    except (BTNetError, KeyError, TypeError) as err:
        raise ArtifactError(f"cannot rebuild the model described by {origin}: {type(err).__name__}: {err}") from err
    files = section.get("files") or {}
    _verify_file(root / WEIGHTS_NAME, files.get(WEIGHTS_NAME), f"{WEIGHTS_NAME} of {origin}")
    _load_weights(model, root / WEIGHTS_NAME, origin)
    recorded, actual = section.get("trunk_fingerprint"), trunk_fingerprint(model)
    if recorded != actual:
        _fingerprint_problem(f"the trunk loaded from {origin} has fingerprint {actual}, its config.json records {recorded}",
                             force, stacklevel=4)


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

    Only the artifact's own ``config.json`` and safetensors files are read. Its ``model_args``
    are checked before anything is built (:func:`check_saved_model_args`): arguments that would
    load a file, download or name weights, arguments the model does not take, and sizes beyond
    the documented limits are refused. Weight files must have their recorded checksums, their
    safetensors headers are checked against the file size and the model's shapes before any
    tensor is read, and the trunk must have its recorded fingerprint.

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

    Raises:
        ArtifactError: missing, corrupted or ill-fitting files; :class:`UnsafeArtifactError` and
            :class:`ArtifactLimitError` (subclasses) for refused arguments and sizes;
            :class:`FingerprintMismatchError` for another trunk.
    """
    files = [CONFIG_NAME, WEIGHTS_NAME, *([CLASSIFIER_NAME] if classifier else [])]
    root, origin, repo_id = _resolve(src, files, revision, cache_dir, token)
    config = _read_json(root / CONFIG_NAME, f"config.json of {origin}")
    section = _btnet_section(config, origin)
    check_saved_model_args(config["model_args"], origin)
    wanted = _wanted(resolutions, [int(r) for r in section.get("resolutions", [])], origin)
    args = {**config["model_args"], "resolutions": wanted, "num_classes": 0}
    try:
        model = _model_class(model_cls)(**args)
    except (BTNetError, KeyError, TypeError) as err:
        raise ArtifactError(f"cannot rebuild the model described by {origin}: {type(err).__name__}: {err}") from err
    _load_artifact(model, root, section, origin, force)
    if classifier:
        _load_classifier(model, root, section, origin)
    cfg = {**model.pretrained_cfg, **{k: _tuples(v) for k, v in (config.get("pretrained_cfg") or {}).items()}}
    cfg.update(architecture=config.get("architecture"), hf_hub_id=repo_id)
    model.pretrained_cfg = model.default_cfg = cfg
    return model.eval()


def artifact_source(pretrained_cfg: Any) -> tuple[str, str] | None:
    """``("local-dir", folder)`` or ``("hf-hub", repo id)`` when timm's ``pretrained_cfg`` comes
    from ``create_model("local-dir:…")`` / ``create_model("hf-hub:…")``, else ``None``."""
    get = pretrained_cfg.get if isinstance(pretrained_cfg, Mapping) else lambda k: getattr(pretrained_cfg, k, None)
    source = get("source") if pretrained_cfg is not None else None
    if source == "local-dir" and get("file"):
        return "local-dir", str(get("file"))
    if source == "hf-hub" and get("hf_hub_id"):
        return "hf-hub", str(get("hf_hub_id"))
    return None


def load_artifact_weights(
    model: BTNet,
    source: tuple[str, str],
    *,
    saved_args: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    token: str | None = None,
) -> BTNet:
    """Load a saved artifact's weights into ``model`` (built by timm from its ``model_args``)
    with exactly :func:`from_pretrained`'s checks: recorded checksums, header-first safetensors
    reads, per-branch specific modules and the trunk fingerprint.

    This is how the zoo's entry points serve ``timm.create_model("local-dir:…", pretrained=True)``
    and ``timm.create_model("hf-hub:…", pretrained=True)`` instead of timm's own weight loader,
    which would load ``model.safetensors`` unchecked.

    Args:
        model: the BTNet timm built.
        source: :func:`artifact_source` of its ``pretrained_cfg``.
        saved_args: the ``model_args`` timm read (``pretrained_model_args``); they must equal the
            ones read here (the folder did not change in between).
        cache_dir: Hub cache folder.
        force: load despite a different trunk fingerprint (with a warning).
        token: Hub token for private repos.

    Returns:
        ``model``.
    """
    kind, location = source
    if kind == "hf-hub":
        repo_id, _, revision = location.partition("@")
        root, origin, _ = _resolve(repo_id, [CONFIG_NAME, WEIGHTS_NAME], revision or None, cache_dir, token,
                                   hub_only=True)
    else:
        root, origin, _ = _resolve(location, [CONFIG_NAME, WEIGHTS_NAME], None, None, None, local_only=True)
    config = _read_json(root / CONFIG_NAME, f"config.json of {origin}")
    section = _btnet_section(config, origin)
    check_saved_model_args(config["model_args"], origin)
    if saved_args is not None and dict(saved_args) != config["model_args"]:
        raise ArtifactError(f"config.json of {origin} changed while it was being loaded; load it again")
    _load_artifact(model, root, section, origin, force)
    return model


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
    """The resolution of the adapter ``config`` once it is known to be made for ``model``'s trunk.

    Its format, resolution and input size must fit. Its trunk is compared by architecture
    (:data:`STRUCTURE_KEYS`, normalised by :func:`_normalised_structure`: a default spelled out
    equals one left out) and by fingerprint. Arguments that still differ are accepted when the
    fingerprint is the model's (the very trunk, only described differently). Otherwise another
    architecture or another trunk raises :class:`ArtifactError` /
    :class:`FingerprintMismatchError`; ``force=True`` turns both into warnings, and loading then
    still checks every tensor's name and shape against the model, all or nothing, so an adapter
    that cannot fit is refused all the same.
    """
    if config.get("format") != _ADAPTER_KIND:
        raise ArtifactError(f"{what} is not a BTNet adapter config (format {config.get('format')!r})")
    check_format_version(config, what)
    r = check_limit(config.get("resolution"), MAX_INPUT_SIZE, f"{what}: resolution", ArtifactLimitError, low=1,
                    accepted=f"1..{MAX_INPUT_SIZE} pixels")
    if resolution is not None and r != int(resolution):
        raise ArtifactError(f"{what} is the adapter for resolution {r}, not {resolution}")
    if config.get("input_size") != model.input_size:
        raise ArtifactError(f"{what} was made for input size {config.get('input_size')}, the model's is {model.input_size}")
    plan = config.get("plan") or {}
    specific = plan.get("specific", []) if isinstance(plan, dict) else None
    if not isinstance(specific, list) or not all(isinstance(s, str) for s in specific):
        raise ArtifactError(f"{what}: plan.specific must be a list of module names, got {specific!r:.200}")
    base = config.get("base_model") or {}
    if not isinstance(base, dict) or not isinstance(base.get("model_args") or {}, dict):
        raise ArtifactError(f"{what}: base_model must be an object with model_args, got {base!r:.200}")
    diff = _structure_diff(_normalised_structure(base.get("model_args") or {}, type(model)),
                           _normalised_structure(model.config(), type(model)))
    ours_fp = trunk_fingerprint(model)
    # Arguments the signatures cannot settle (an entry point's own value spelled out) are fine
    # when the trunk is the very one the adapter was trained on: same names, shapes and values.
    if diff and base.get("trunk_fingerprint") != ours_fp:
        message = (f"{what} was made for another trunk architecture ({base.get('architecture')}); differences: "
                   f"{'; '.join(diff[:8])}{f'; … ({len(diff) - 8} more)' if len(diff) > 8 else ''}")
        if not force:
            raise ArtifactError(f"{message}. Pass force=True to try it anyway (every tensor's name and shape is "
                                "still checked, nothing is loaded unless all fit)")
        warnings.warn(f"{message}; trying anyway (force=True)", stacklevel=3)
    if base.get("trunk_fingerprint") != ours_fp:
        _fingerprint_problem(
            f"{what} was trained on trunk {base.get('trunk_fingerprint')}, but this model's trunk is {ours_fp}", force,
            stacklevel=3)  # the caller of load_adapter
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
    The adapter must have been made for this trunk: another architecture (compared with defaults
    filled in, so spelled-out defaults match omitted ones) or another trunk fingerprint is
    refused unless ``force=True``, which warns and tries; every tensor is still checked, and on
    any error the model is left as it was.

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
    """Build branch ``r`` as the adapter describes it, load its tensors and attach it, all or
    nothing (:meth:`BTNet.add_branch` with ``state_dict``): on any error the model is unchanged."""
    specific = list(plan.get("specific", []))
    try:
        implant = model.plan_branch(r, specific).implant
        if plan.get("implant") not in (None, implant):
            raise ArtifactError(f"{what} implants at {plan.get('implant')}, this model's branch {r} at {implant}")
        model.add_branch(r, specific=specific, state_dict=tensors)
    except (BTNetError, RuntimeError) as err:
        if isinstance(err, ArtifactError):
            raise
        raise ArtifactError(f"{what} does not fit the model: {err}") from err


# --------------------------------------------------------------------------- model class
#: The class :func:`from_pretrained` builds when given no ``model_cls``, and whose arguments
#: :func:`check_saved_model_args` accepts: :class:`~btnet_adapters.model.BTNet`, which names itself
#: here when it is defined (:func:`default_model_class`). The hub sits below the model and never
#: imports it.
_default_model_cls: type[BTNet] | None = None


def default_model_class(cls: type[BTNet]) -> type[BTNet]:
    """Class decorator: ``cls`` becomes the class the module-level :func:`from_pretrained` builds."""
    global _default_model_cls
    _default_model_cls = cls
    return cls


def _model_class(model_cls: type[BTNet] | None) -> type[BTNet]:
    if model_cls is not None:
        return model_cls
    if _default_model_cls is None:  # unreachable through `import btnet_adapters…`: the package defines BTNet
        raise ConfigError("no model class is registered: import btnet_adapters (it defines BTNet) or pass model_cls=")
    return _default_model_cls


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
    from ._parse import int_list

    p = subparsers.add_parser("push", help="upload a saved BTNet (or only its adapters) to the Hugging Face Hub")
    p.add_argument("src", help="folder written by save_pretrained (its metrics and licence are kept)")
    p.add_argument("repo_id", help="target Hub repo, e.g. me/btnet-mfn")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--adapters-only", action="store_true", help="upload only adapters/ and a model card")
    p.add_argument("--resolutions", type=int_list, default=None, help="adapters to upload, e.g. 7,14 (default: all)")
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
