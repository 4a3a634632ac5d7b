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
from safetensors.torch import load_file, safe_open, save_file

from .. import hub
from ..checkpoints import read_state_dict
from ..data import read_class_index, write_class_index
from ..errors import ConfigError
from ..heads import HEADS, MarginHead, create_head
from ..model import BTNet
from .._atomic import atomic_path
from .partial_fc import head_hyper_parameters, head_name

logger = logging.getLogger(__name__)

CLASSES = "classes.json"
TRAIN_CONFIG = "train_config.json"
_CLASSIFIER_KIND = "btnet-classifier"


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
    return dict(json.loads(path.read_text(encoding="utf-8")).get("margin_kwargs") or {})


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
    """Write a margin head: ``classifier.*`` tensors; type and hyper-parameters in the metadata."""
    meta = {"format": "pt", "btnet_kind": _CLASSIFIER_KIND, "margin": head_name(head),
            "hparams": json.dumps(head_hyper_parameters(head))}
    data = {f"classifier.{k}": v.detach().to("cpu").contiguous().clone() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=meta)
    return Path(path)


def load_classifier(path: str | os.PathLike[str]) -> MarginHead:
    """Rebuild a margin head from :func:`save_classifier`'s file, or from a hub artifact's
    ``classifier.safetensors`` (type from its ``config.json``, hyper-parameters from a
    ``train_config.json`` next to it, else the defaults)."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = {k.removeprefix("classifier."): v for k, v in load_file(str(p)).items()}
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"cannot read classifier {p}: {err}") from None
    if meta.get("btnet_kind") != _CLASSIFIER_KIND or "weight" not in tensors:
        raise ConfigError(f"{p} is not a btnet classifier file")
    margin = meta.get("margin") or trunk_info(p.parent)["margin"]
    kwargs = json.loads(meta["hparams"]) if "hparams" in meta else margin_kwargs_of(p.parent)
    if margin not in HEADS:
        raise ConfigError(f"{p}: unknown margin head {margin!r}; accepted: {tuple(HEADS)}")
    num_classes, embed_dim = tensors["weight"].shape
    head = create_head(margin, int(embed_dim), int(num_classes), **kwargs)
    head.load_state_dict(tensors, strict=True)
    return head.eval()
