"""One conversion of Python, numpy and torch values to strict JSON (reports, configs, manifests)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with mappings as ``{str: ...}``, tuples and lists as lists, numpy / torch arrays
    and scalars as Python values (``.tolist()``), paths as strings, and non-finite floats as
    ``None`` — JSON has no NaN or infinity, so ``json.dumps(..., allow_nan=False)`` accepts the
    result."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if not isinstance(value, (str, bytes, int, float)) and callable(getattr(value, "tolist", None)):
        return jsonable(value.tolist())  # numpy / torch arrays and scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
