"""Atomic, world-size-independent training checkpoints (one safetensors file each).

A checkpoint holds full tensors only (a sharded classifier and its momentum are gathered
first), named by what they are, plus JSON metadata (step, configuration, AMP scaler state),
so a run saved by 4 processes resumes on 1 or 8. Files are written to a temporary name and
renamed, so a run killed while saving leaves the previous checkpoint intact.

The metadata also holds a ``sha256`` checksum over the metadata and every tensor (name, dtype,
shape, bytes); :func:`load_checkpoint` verifies it, so a flipped bit or a truncated file stops
the resume with :class:`~btnet_adapters.errors.CorruptFileError` instead of resuming from
wrong values. Checkpoints written before checksums existed load with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .._atomic import atomic_path
from ..errors import ConfigError, CorruptFileError

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


def checksum(tensors: dict[str, torch.Tensor], meta: str) -> str:
    """``"sha256:<hex>"`` over the metadata string and the tensors sorted by name (each name,
    dtype, shape and raw bytes, length-prefixed)."""
    digest = hashlib.sha256()
    chunks: list[bytes | memoryview] = [meta.encode("utf-8")]
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        chunks.append(json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode("utf-8"))
        chunks.append(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "little"))
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def save_checkpoint(folder: str | os.PathLike[str], step: int, tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any], keep: int = 2) -> Path:
    """Write ``tensors`` + ``meta`` (+ their :func:`checksum`) as the checkpoint of ``step``;
    keep the ``keep`` newest."""
    path = checkpoint_path(folder, step)
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    text = json.dumps({**meta, "step": int(step)})
    header = {"format": FORMAT, "meta": text, "checksum": checksum(data, text)}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=header)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _remedy(path: Path) -> str:
    """What to do about a bad checkpoint: delete it, naming the one a resume falls back to."""
    match = _NAME.match(path.name)
    if match is None:
        return f"delete or replace {path}"
    earlier = [p for step, p in list_checkpoints(path.parent) if step < int(match.group(1))]
    then = (f"resume from the previous checkpoint {earlier[-1].name}" if earlier
            else "start the run again (no earlier checkpoint is left)")
    return f"delete {path} to {then}"


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a checkpoint written by :func:`save_checkpoint`, checksum verified.

    Raises:
        CorruptFileError: the file is truncated, unreadable or fails its checksum (the message
            says which file to delete to resume from the previous checkpoint).
        ConfigError: the file is a safetensors file but not a training checkpoint.
    """
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
        if header.get("format") != FORMAT:
            if "checksum" in header:  # ours, with a damaged header
                raise CorruptFileError(f"checkpoint {p} is corrupted: its header is damaged; {_remedy(p)}")
            raise ConfigError(f"{p} is not a btnet training checkpoint")
        tensors = load_file(str(p))
    except (SafetensorError, OSError) as err:
        raise CorruptFileError(f"cannot read checkpoint {p} (truncated or corrupted?): {err}; {_remedy(p)}") from None
    recorded = header.get("checksum")
    if recorded is None:
        warnings.warn(f"checkpoint {p} has no checksum (written by an older btnet_adapters): it is loaded "
                      "unverified", stacklevel=2)
    elif checksum(tensors, header.get("meta", "")) != recorded:
        raise CorruptFileError(f"checkpoint {p} is corrupted: its contents do not match the checksum recorded "
                               f"when it was written; {_remedy(p)}")
    try:
        return tensors, json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"cannot read checkpoint {p}: bad metadata ({err}); {_remedy(p)}") from None


def split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` with the prefix removed."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``tensors`` with keys ``prefix.<key>``."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}
