"""The paper's resolution gains (BTNet, BMVC 2023, §4.2).

For a metric ``M`` (higher is better) of a model ``φ`` under a setting:

* cross-resolution ``r1&r2``: ``Gain(φ) = (M(φ) − M(φ_hr)) / |M(φ_mr) − M(φ_hr)|`` with
  ``φ_hr`` the model trained on high-resolution images only and ``φ_mr`` the one trained on
  mixed resolutions (up-sampled);
* same-resolution ``r&r``: ``Gain(φ) = (M(φ) − M(φ_hr)) / |M(φ_r) − M(φ_hr)|`` with ``φ_r``
  the independent model trained at resolution ``r``.

A gain of 1 means ``φ`` improves on ``φ_hr`` as much as the reference model does. When the
reference model scores exactly like ``φ_hr`` the denominator is zero and the gain is
undefined: these functions then return ``nan`` and emit a :class:`GainWarning`.
"""

from __future__ import annotations

import math
import warnings

from .errors import EmbeddingError


class GainWarning(RuntimeWarning):
    """A gain is undefined (zero denominator) and was reported as nan."""


def _gain(m: float, m_hr: float, m_ref: float, ref_name: str) -> float:
    values = (float(m), float(m_hr), float(m_ref))
    if not all(math.isfinite(v) for v in values):
        raise EmbeddingError(f"gain inputs must be finite numbers, got {values}")
    denom = abs(values[2] - values[1])
    if denom == 0.0:
        warnings.warn(f"gain undefined: M({ref_name}) equals M(phi_hr) = {values[1]}; "
                      f"returning nan", GainWarning, stacklevel=3)
        return math.nan
    return (values[0] - values[1]) / denom


def cross_resolution_gain(m: float, m_hr: float, m_mr: float) -> float:
    """``(M(φ) − M(φ_hr)) / |M(φ_mr) − M(φ_hr)|`` for a cross-resolution setting ``r1&r2``."""
    return _gain(m, m_hr, m_mr, "phi_mr")


def same_resolution_gain(m: float, m_hr: float, m_r: float) -> float:
    """``(M(φ) − M(φ_hr)) / |M(φ_r) − M(φ_hr)|`` for a same-resolution setting ``r&r``."""
    return _gain(m, m_hr, m_r, "phi_r")
