"""Saving and loading the identity → label mapping a classifier was trained with.

A trunk's classifier rows are tied to labels; a branch trained later (frozen classifier, BCT)
must see the same identity → label mapping. Store it with the run and pass it back as
``class_to_idx`` when opening the data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Mapping

from .._atomic import write_text_atomic
from .errors import DatasetError, MissingDataError


def write_class_index(path: str | os.PathLike[str], class_to_idx: Mapping[str, int]) -> None:
    """Write ``class_to_idx`` as a JSON object, atomically (temp file + rename)."""
    data = {str(k): int(v) for k, v in class_to_idx.items()}
    write_text_atomic(path, json.dumps(data, ensure_ascii=False))


def read_class_index(path: str | os.PathLike[str]) -> dict[str, int]:
    """Read a mapping written by :func:`write_class_index`."""
    source = Path(path)
    if not source.is_file():
        raise MissingDataError(f"class index not found: {source}")
    data = json.loads(source.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, int) and v >= 0 for v in data.values()):
        raise DatasetError(f"{source}: expected a JSON object of identity -> label (int >= 0)")
    return {str(k): int(v) for k, v in data.items()}
