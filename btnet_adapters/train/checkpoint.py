"""Atomic, world-size-independent training checkpoints (one safetensors file each).

A checkpoint holds full tensors only (a sharded classifier and its momentum are gathered
first), named by what they are, plus JSON metadata (step, configuration, AMP scaler state),
so a run saved by 4 processes resumes on 1 or 8. Files are written to a temporary name and
renamed, so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .._atomic import atomic_path
from ..errors import ConfigError

FORMAT = "btnet-train-checkpoint"
_NAME = re.compile(r"^ckpt-(\d{9})\.safetensors$")


def checkpoint_path(folder: str | os.PathLike[str], step: int) -> Path:
    """``folder/ckpt-<step>.safetensors``."""
    return Path(folder) / f"ckpt-{int(step):09d}.safetensors"


def list_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint in ``folder``, oldest first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), root / name) for name in os.listdir(root) if (m := _NAME.match(name))]
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def save_checkpoint(folder: str | os.PathLike[str], step: int, tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any], keep: int = 2) -> Path:
    """Write ``tensors`` + ``meta`` as the checkpoint of ``step``; keep the ``keep`` newest."""
    path = checkpoint_path(folder, step)
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {"format": FORMAT, "meta": json.dumps({**meta, "step": int(step)})}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=header)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a checkpoint written by :func:`save_checkpoint`."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
        if header.get("format") != FORMAT:
            raise ConfigError(f"{p} is not a btnet training checkpoint")
        return load_file(str(p)), json.loads(header["meta"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read checkpoint {p}: {err}") from None


def split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` with the prefix removed."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``tensors`` with keys ``prefix.<key>``."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}
