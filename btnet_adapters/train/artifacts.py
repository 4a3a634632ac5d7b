"""What runs read and write besides checkpoints.

Models and adapters use the artifact layout of :mod:`btnet_adapters.hub`: a trunk run folder
is a ``save_pretrained`` folder (``config.json``, ``model.safetensors``,
``classifier.safetensors``) plus ``classes.json`` (identity → label) and the run's
``train_config.json``; a branch run writes ``adapters/r<r>/`` (``adapter_config.json`` +
``adapter_model.safetensors``, only that resolution's tensors).

This module adds what training needs on top: imported trunk weights, and margin heads with
their hyper-parameters. A classifier file has ``classifier.<name>`` tensors like the hub's,
and records the head type and hyper-parameters in its metadata; a hub classifier file (which
records them in the folder's ``config.json`` / the trunk run's ``train_config.json``) is read
too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from .. import hub
from ..checkpoints import read_state_dict
from ..data import read_class_index, write_class_index
from .._untrusted import MAX_EMBED_DIM, MAX_NUM_CLASSES, check_limit, read_json_file, read_safetensors_header
from ..errors import BTNetError, ConfigError
from ..heads import HEADS, MarginHead, create_head
from ..model import BTNet
from .._atomic import atomic_path
from .partial_fc import head_hyper_parameters, head_name

logger = logging.getLogger(__name__)

CLASSES = "classes.json"
TRAIN_CONFIG = "train_config.json"
_CLASSIFIER_KIND = "btnet-classifier"
_PREFIX = "classifier."


def _few(items: list[str]) -> str:
    return f"{items[:4]}{' …' if len(items) > 4 else ''} ({len(items)})"


def _check_keys(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str, what: str) -> None:
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise ConfigError(
            f"{where} does not fit {what}: the weights come from another architecture or configuration. "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}, shape mismatch {_few(shapes)}")


# ---------------------------------------------------------------------- trunks
def load_trunk_weights(model: BTNet, path: str | os.PathLike[str]) -> None:
    """Load imported trunk weights (``.safetensors``, or an arcface_torch ``.pt``/``.pth`` read
    with ``weights_only``): the backbone's own keys go into ``model.trunk``; ``trunk.*`` /
    ``head.*`` keys into the trunk and embedding head.

    Raises:
        ConfigError: the keys or shapes do not match (another architecture), or the file is unreadable.
    """
    try:
        state = read_state_dict(path)
    except hub.ArtifactError as err:
        raise ConfigError(f"cannot read trunk weights: {err}") from None
    what = f"the trunk of {model.config()['backbone']!r}"
    if all(k.startswith(("trunk.", "head.")) for k in state):
        _check_keys(model.trunk_state_dict(), state, str(path), what)
        model.load_state_dict(state, strict=False)
    else:
        _check_keys(model.trunk.state_dict(), state, str(path), what)
        model.trunk.load_state_dict(state, strict=True)


def trunk_info(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What a saved model folder says about its classifier: ``{"num_classes", "margin"}``
    (``num_classes`` 0 when it was saved without one)."""
    path = Path(folder) / hub.CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{folder} is not a saved model folder: cannot read {path} ({err})") from None
    head = (config.get("btnet") or {}).get("classifier") or {}
    return {"num_classes": int(head.get("num_classes", 0)), "margin": head.get("margin")}


def margin_kwargs_of(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The margin-head hyper-parameters recorded by the run that wrote ``folder`` (``{}``: defaults)."""
    path = Path(folder) / TRAIN_CONFIG
    if not path.is_file():
        return {}
    config = read_json_file(path, f"{TRAIN_CONFIG} of {folder}", ConfigError, hub.ArtifactLimitError)
    kwargs = (config.get("margin_kwargs") if isinstance(config, dict) else None) or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{path}: margin_kwargs must be a JSON object, got {kwargs!r:.200}")
    return dict(kwargs)


def load_trunk_folder(folder: str | os.PathLike[str]) -> tuple[BTNet, MarginHead | None, dict[str, int] | None]:
    """A trunk saved with :func:`btnet_adapters.hub.save_pretrained` (e.g. by a trunk run): the
    model without branches, its classifier with the hyper-parameters it was trained with
    (``None`` if saved without one), and its identity → label mapping (if recorded)."""
    info = trunk_info(folder)
    try:
        model = hub.from_pretrained(folder, resolutions=[], classifier=bool(info["num_classes"]))
    except hub.ArtifactError as err:
        raise ConfigError(f"cannot load the trunk: {err}") from None
    head = model.classifier
    kwargs = margin_kwargs_of(folder)
    if head is not None and kwargs:
        rebuilt = create_head(info["margin"], head.embed_dim, head.num_classes, **kwargs)
        rebuilt.load_state_dict(head.state_dict(), strict=True)
        head = rebuilt
    model.classifier = None
    classes = read_class_index(Path(folder) / CLASSES) if (Path(folder) / CLASSES).is_file() else None
    return model, head, classes


def save_trunk_folder(model: BTNet, folder: str | os.PathLike[str], class_to_idx: dict[str, int]) -> list[Path]:
    """Write a trained trunk as a hub artifact (classifier included) plus ``classes.json``."""
    root = hub.save_pretrained(model, folder, classifier=True, overwrite=True)
    write_class_index(root / CLASSES, class_to_idx)
    names = (hub.CONFIG_NAME, hub.WEIGHTS_NAME, hub.CLASSIFIER_NAME, CLASSES)
    return [root / n for n in names if (root / n).is_file()]


def save_adapter_folder(model: BTNet, resolution: int, folder: str | os.PathLike[str]) -> Path:
    """Write branch ``resolution`` as ``folder/adapters/r<r>/`` (hub adapter format)."""
    hub.save_pretrained(model, folder, resolutions=[resolution], adapters_only=True, model_card=False,
                        overwrite=True)
    return Path(folder) / hub.ADAPTERS_DIR / f"r{resolution}"


# ---------------------------------------------------------------------- classifiers
def save_classifier(head: MarginHead, path: str | os.PathLike[str]) -> Path:
    """Write a margin head in the classifier file format (:func:`load_classifier`): its tensors
    as ``classifier.<name>``, the names of a saved model's ``classifier.safetensors``, and its
    type and hyper-parameters in the metadata, so that the file describes itself."""
    meta = {"format": "pt", "btnet_kind": _CLASSIFIER_KIND, "margin": head_name(head),
            "hparams": json.dumps(head_hyper_parameters(head))}
    data = {f"{_PREFIX}{k}": v.detach().to("cpu").contiguous().clone() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=meta)
    return Path(path)


def load_classifier(path: str | os.PathLike[str]) -> MarginHead:
    """Rebuild a margin head from a classifier file.

    Both writers write one format: a safetensors file holding only the head's tensors, named
    ``classifier.<name>`` (``classifier.weight`` is ``(num_classes, embed_dim)``). Which head it
    is, and with which hyper-parameters, is read from

    * the file's metadata (``btnet_kind="btnet-classifier"``, ``margin``, ``hparams``), as
      :func:`save_classifier` writes it (the classifier a branch run or ``btnet reproduce`` fits); or
    * for the ``classifier.safetensors`` of a saved model
      (:func:`btnet_adapters.hub.save_pretrained` with ``classifier=True``, any format version, e.g.
      a trunk run's folder), the folder's ``config.json``: ``btnet.classifier`` names the file, its
      margin head and class count, and ``btnet.files`` its checksum, which must match. Its
      hyper-parameters are those of a ``train_config.json`` next to it, else the head's defaults.

    The safetensors header is checked (:func:`btnet_adapters._untrusted.read_safetensors_header`)
    before any tensor is read.

    Raises:
        ConfigError: the file is missing, unreadable, not a classifier file (another safetensors
            file, or one with no description), corrupted, or does not fit what describes it;
            :class:`btnet_adapters.hub.ArtifactLimitError` (a subclass) for sizes beyond the
            documented limits.
    """
    p = Path(path)
    what = f"classifier {p}"
    if not p.is_file():
        raise ConfigError(f"classifier not found: {p}")
    header = read_safetensors_header(p, "the classifier file", ConfigError, hub.ArtifactLimitError)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"cannot read {what}: {err}") from None
    if meta.get("btnet_kind") == _CLASSIFIER_KIND:
        margin, num_classes, kwargs = meta.get("margin"), None, _hparams(meta.get("hparams"), what)
    elif "btnet_kind" in meta:
        raise ConfigError(f"{p} is not a btnet classifier file: it holds {meta['btnet_kind']!r}")
    else:
        margin, num_classes = _saved_model_classifier(p)
        kwargs = margin_kwargs_of(p.parent)
    weight = header.get(f"{_PREFIX}weight")
    others = sorted(n for n in header if not n.startswith(_PREFIX))
    if weight is None or len(weight.shape) != 2 or others:
        raise ConfigError(f"{p} is not a btnet classifier file: it needs {_PREFIX}weight (classes × embedding) "
                          f"and only {_PREFIX}* tensors, it holds {_few(sorted(header))}")
    rows, dim = weight.shape
    check_limit(rows, MAX_NUM_CLASSES, f"the classes of {what}", hub.ArtifactLimitError, low=1)
    check_limit(dim, MAX_EMBED_DIM, f"the embedding size of {what}", hub.ArtifactLimitError, low=1)
    if num_classes is not None and rows != num_classes:
        raise ConfigError(f"{what} holds {rows} classes, its config.json records {num_classes}")
    if margin not in HEADS:
        raise ConfigError(f"{what}: unknown margin head {margin!r}; accepted: {tuple(HEADS)}")
    try:
        head = create_head(margin, int(dim), int(rows), **kwargs)
        with safe_open(str(p), framework="pt") as f:
            tensors = {n.removeprefix(_PREFIX): f.get_tensor(n) for n in sorted(header)}
        head.load_state_dict(tensors, strict=True)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"cannot read {what}: {err}") from None
    except (TypeError, ValueError, RuntimeError, BTNetError) as err:
        raise ConfigError(f"{what} does not fit a {margin} head with {kwargs}: {err}") from None
    return head.eval()


def _hparams(text: str | None, what: str) -> dict[str, Any]:
    """The ``hparams`` metadata of a classifier file: a JSON object of numbers and booleans."""
    try:
        kwargs = json.loads(text) if text is not None else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what}: its hparams metadata is not JSON: {err}") from None
    if not isinstance(kwargs, dict) or not all(isinstance(v, (bool, int, float)) for v in kwargs.values()):
        raise ConfigError(f"{what}: its hparams metadata must map names to numbers or booleans, got {text!r:.200}")
    return kwargs


def _saved_model_classifier(path: Path) -> tuple[str, int]:
    """``(margin, num_classes)`` of the classifier file of a saved model, from the folder's
    ``config.json`` (which must name it), after checking the file's recorded checksum."""
    config_path = path.parent / hub.CONFIG_NAME
    unknown = (f"{path} is not a btnet classifier file: it has no btnet-classifier metadata (as save_classifier "
               f"writes) and no {hub.CONFIG_NAME} next to it names it as a saved model's classifier")
    if not config_path.is_file():
        raise ConfigError(unknown)
    config = read_json_file(config_path, f"{hub.CONFIG_NAME} of {path.parent}", ConfigError, hub.ArtifactLimitError)
    section = config.get("btnet") if isinstance(config, dict) else None
    record = section.get("classifier") if isinstance(section, dict) else None
    if not isinstance(record, dict) or record.get("file") != path.name:
        raise ConfigError(unknown)
    files = section.get("files")
    hub._verify_file(path, files.get(path.name) if isinstance(files, dict) else None, f"classifier {path}")
    num_classes = check_limit(record.get("num_classes"), MAX_NUM_CLASSES,
                              f"{config_path}: btnet.classifier.num_classes", hub.ArtifactLimitError, low=1)
    return record.get("margin"), num_classes
