"""Result tables (Markdown + JSON) and plots (matplotlib, Agg, imported lazily).

Rates are stored as fractions in result objects; the table rows built here print them in
percent, and say so in the column names.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._json import jsonable
from ..errors import ConfigError
from .._atomic import atomic_path, write_text_atomic
from .identification import IdentificationResult
from .ijb import IJBIdentificationResult, IJBVerificationResult
from .verification import VerificationResult

Row = Mapping[str, Any]


def _pct(x: float) -> float:
    return 100.0 * float(x)


def verification_row(name: str, setting: str, result: VerificationResult, **extra: Any) -> dict:
    """One table row: accuracy ± std and TAR@FAR of a model under a setting (percent)."""
    row = {"model": name, "setting": setting, **extra,
           "accuracy (%)": _pct(result.accuracy), "std (%)": _pct(result.accuracy_std)}
    row.update({f"TAR@FAR={f:g} (%)": _pct(v) for f, v in result.tar_at_far.items()})
    return row


def identification_row(name: str, result: IdentificationResult, mode: str, **extra: Any) -> dict:
    """One table row: open-set AUC / TPIR (named mode) and CMC of a model (percent)."""
    row: dict[str, Any] = {"model": name, **extra, "mode": mode}
    if mode in result.open_set:
        o = result.open_set[mode]
        row["AUC (%)"] = _pct(o.auc)
        row.update({f"TPIR{o.rank}@FPIR={f:g} (%)": _pct(v) for f, v in o.tpir.items()})
    elif result.open_set:
        raise ConfigError(f"no {mode!r} open-set result; available: {sorted(result.open_set)}")
    row.update({f"rank-{r} (%)": _pct(v) for r, v in result.cmc.items()})
    return row


def ijb_row(name: str, verification: IJBVerificationResult | None = None,
            identification: IJBIdentificationResult | None = None, **extra: Any) -> dict:
    """One IJB table row: TAR@FAR (1:1), CMC, TPIR@pseudo_fpir and TPIR@nist_fpir (percent)."""
    row: dict[str, Any] = {"model": name, **extra}
    if verification is not None:
        row.update({f"TAR@FAR={f:g} (%)": _pct(v) for f, v in verification.tar_at_far.items()})
    if identification is not None:
        row.update({f"rank-{r} (%)": _pct(v) for r, v in identification.cmc.items()})
        row.update({f"TPIR@pseudo_fpir={f:g} (%)": _pct(v)
                    for f, v in identification.pseudo_fpir.items()})
        if identification.nist_fpir is not None:
            n = identification.nist_fpir
            row.update({f"TPIR{n.rank}@nist_fpir={f:g} (%)": _pct(v) for f, v in n.tpir.items()})
    return row


def pivot(rows: Sequence[Row], index: str, columns: str, values: str) -> list[dict]:
    """Reshape long rows into one row per ``index`` value and one column per ``columns`` value."""
    out: dict[Any, dict] = {}
    for r in rows:
        out.setdefault(r[index], {index: r[index]})[str(r[columns])] = r[values]
    return list(out.values())


def _columns(rows: Sequence[Row], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    return list(dict.fromkeys(k for r in rows for k in r))


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else format(float(value), floatfmt)
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Row], columns: Sequence[str] | None = None, *,
                   floatfmt: str = ".2f", title: str | None = None) -> str:
    """Render rows (dicts) as a GitHub Markdown table; missing cells stay empty."""
    cols = _columns(rows, columns)
    if not cols:
        raise ConfigError("a table needs at least one column")
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c), floatfmt) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Row], path: str | os.PathLike[str], *,
                columns: Sequence[str] | None = None, title: str | None = None,
                meta: Mapping[str, Any] | None = None, floatfmt: str = ".2f"
                ) -> tuple[Path, Path]:
    """Write ``path.md`` (Markdown) and ``path.json`` atomically; return both paths.

    The JSON holds ``title``, ``columns``, ``rows`` (full precision; nan/inf as null) and
    ``meta`` (protocol settings such as the resize spec, mode and FAR rule).
    """
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".md", ".json") else base
    cols = _columns(rows, columns)
    md = markdown_table(rows, cols, floatfmt=floatfmt, title=title)
    doc = {"title": title, "columns": cols, "rows": [dict(r) for r in rows],
           "meta": dict(meta or {})}
    md_path = write_text_atomic(base.with_name(base.name + ".md"), md)
    json_path = write_text_atomic(base.with_name(base.name + ".json"),
                           json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n")
    return md_path, json_path


def _figure(figsize: tuple[float, float] = (6.0, 4.5)) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plots need matplotlib (pip install 'btnet-adapters[plots]')") from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=150,
                    bbox_inches="tight")
    return Path(path)


def plot_roc(curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike[str], *,
             title: str = "ROC", log_fpr: bool = True) -> Path:
    """ROC curves (``{label: (fpr, tpr)}``) with a log FPR axis; saved atomically."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
        keep = fpr > 0 if log_fpr else slice(None)
        ax.plot(fpr[keep], tpr[keep], lw=1.2, label=label)
    if log_fpr:
        ax.set_xscale("log")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.grid(True, ls="--", alpha=0.5)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_accuracy_vs_resolution(results: Mapping[str, Mapping[Any, float]],
                                path: str | os.PathLike[str], *,
                                ylabel: str = "accuracy (%)",
                                title: str = "accuracy vs resolution") -> Path:
    """One line per model over settings/resolutions (``{model: {setting: value}}``), in order."""
    fig = _figure()
    ax = fig.add_subplot()
    labels = list(dict.fromkeys(str(k) for per in results.values() for k in per))
    pos = {lab: i for i, lab in enumerate(labels)}
    for model, per in results.items():
        xs = [pos[str(k)] for k in per]
        ax.plot(xs, [float(v) for v in per.values()], marker="o", lw=1.2, label=model)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel="setting / resolution", ylabel=ylabel, title=title)
    ax.grid(True, ls="--", alpha=0.5)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_tpir_fpir(curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike[str], *,
                   title: str = "TPIR vs FPIR", log_fpir: bool = False,
                   steps: bool = False) -> Path:
    """Open-set curves (``{label: (fpir, tpir)}``); ``steps`` draws exact-mode step curves."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, (fpir, tpir) in curves.items():
        fpir, tpir = np.asarray(fpir, float), np.asarray(tpir, float)
        order = np.argsort(fpir, kind="stable")
        ax.plot(fpir[order], tpir[order], lw=1.2, label=label,
                drawstyle="steps-post" if steps else "default")
    if log_fpir:
        ax.set_xscale("log")
    ax.set(xlabel="FPIR", ylabel="TPIR", title=title)
    ax.grid(True, ls="--", alpha=0.5)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)
