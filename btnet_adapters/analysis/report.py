"""Tables (Markdown + JSON) and plots of the analyses, written atomically.

* Up-sampling error: :func:`upsampling_table`, :func:`plot_upsampling` (the paper's Fig. 1:
  error against resolution, log axes) and :func:`write_upsampling` (``.md``, ``.json``,
  ``.png``).
* Cost per path: :func:`cost_markdown`, :func:`plot_latency` (bars of median latency per path)
  and :func:`write_costs` (``.md``, ``.json``, FLOPs/parameter bars from
  :func:`btnet_adapters.cost.plot_costs`, and the latency bars when latency was measured).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import cost
from .._atomic import write_bytes_atomic, write_text_atomic
from ..errors import ConfigError
from ..evaluate.report import markdown_table
from .costs import StorageSummary, storage_summary
from .upsampling import UpsamplingReport

#: Branch resolutions of the paper, marked on the up-sampling error plot.
PAPER_BRANCHES = (7, 14, 28)

#: Column names of the up-sampling table, by :class:`UpsamplingRow` field.
UPSAMPLING_COLUMNS = {
    "resolution": "resolution (px)",
    "spacing": "h = S/r",
    "bound": "estimate, sup",
    "mixed_term": "4th-order mixed term",
    "pointwise_bound": "estimate, mean",
    "mae": "MAE",
    "rmse": "RMSE",
    "max_abs": "max abs error",
    "mae_full": "MAE, whole image",
    "within_bound": "error ≤ estimate (%)",
}


def _figure(figsize: tuple[float, float]) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plots need matplotlib (pip install 'btnet-adapters[plots]')") from None

    fig = Figure(figsize=figsize, constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in cost.PLOT_FORMATS:
        raise ConfigError(f"plot file {path.name!r} has an unsupported suffix; accepted: {cost.PLOT_FORMATS}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=150)
    write_bytes_atomic(path, buf.getvalue())
    return path


def _write(path: Path, text: str) -> Path:
    write_text_atomic(path, text)
    return path


# ----------------------------------------------------------------------------- up-sampling
def upsampling_table(report: UpsamplingReport) -> str:
    """The report as a Markdown table with a title and a one-line description of its settings."""
    rows = []
    for r in report.rows:
        row = {UPSAMPLING_COLUMNS[k]: v for k, v in vars(r).items()}
        row[UPSAMPLING_COLUMNS["within_bound"]] = 100.0 * r.within_bound
        rows.append(row)
    title = f"Up-sampling error, {report.images} images, {report.resize} down and up"
    note = (f"\nLuminance in [0, 1]; images of {report.size} px down-sampled to r and up-sampled "
            f"back, averaged over images. Estimates: bilinear interpolation bound from the "
            f"image's second and fourth-order mixed differences; measured errors over the "
            f"pixels between the first and last sample centres unless marked 'whole image'. "
            f"Source: {report.source}.\n")
    return markdown_table(rows, list(UPSAMPLING_COLUMNS.values()), floatfmt=".4g", title=title) + note


def plot_upsampling(report: UpsamplingReport, path: str | os.PathLike[str],
                    title: str | None = None, branches: Sequence[int] = PAPER_BRANCHES) -> Path:
    """Estimate and measured error against resolution, log axes (the paper's Fig. 1).

    Zero values (the reference size itself) are left out of the log axis. ``branches`` are
    marked with dotted vertical lines.
    """
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    res = [r.resolution for r in report.rows]
    fig = _figure((6.8, 5.4))
    ax = fig.add_subplot()
    lines = [
        ("bound", "o-", "estimate, sup: h²/8·max|Δ²f| + h⁴/64·max|Δ²ₓΔ²ᵧf|"),
        ("mixed_term", "--", "its 4th-order mixed term h⁴/64·max|Δ²ₓΔ²ᵧf|"),
        ("pointwise_bound", "s-", "estimate, mean of the cell-local bound"),
        ("mae", "^-", f"measured MAE ({report.resize})"),
        ("rmse", "v:", "measured RMSE"),
    ]
    for field, style, label in lines:
        ax.plot(res, [getattr(r, field) for r in report.rows], style, lw=1.3, ms=4, label=label)
    for b in branches:
        if res[0] <= b <= res[-1]:
            ax.axvline(b, color="grey", ls=":", lw=0.8)
            ax.text(b, 0.99, f"branch {b} ", transform=ax.get_xaxis_transform(), va="top",
                    fontsize=7, color="grey", rotation=90)
    ax.set_xscale("log")
    ax.set_yscale("log", nonpositive="mask")
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(res) & {4, 7, 8, 14, 16, 28, 32, 56, 64, 112})
                                            or res))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(f"resolution r (px; up-sampled back to {report.size})")
    ax.set_ylabel("error (luminance in [0, 1])")
    ax.grid(True, ls="--", alpha=0.4)
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.set_title(title or f"Bilinear up-sampling error, {report.images} images")
    return _save(fig, path)


def write_upsampling(report: UpsamplingReport, out: str | os.PathLike[str],
                     stem: str = "upsampling_error") -> list[Path]:
    """Write ``out/stem.md``, ``out/stem.json`` and ``out/stem.png``; return their paths."""
    out = Path(out)
    return [_write(out / f"{stem}.md", upsampling_table(report)),
            _write(out / f"{stem}.json", json.dumps(report.to_dict(), indent=2) + "\n"),
            plot_upsampling(report, out / f"{stem}.png")]


# ----------------------------------------------------------------------------- cost
def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MB"


def storage_lines(summary: StorageSummary) -> list[str]:
    """Markdown bullet lines comparing BTNet's storage with one full model per resolution."""
    adapters = ", ".join(f"{r}: {_mb(b)}" for r, b in summary.adapter_bytes.items())
    return [
        f"- full model (trunk + head): {_mb(summary.full_bytes)}",
        f"- adapters (branch tensors + per-resolution norm state): {adapters}",
        f"- BTNet, trunk + all adapters: {_mb(summary.btnet_bytes)}",
        f"- one full model per resolution ({summary.paths} models, as the reference release "
        f"stores branches): {_mb(summary.separate_bytes)}; BTNet needs "
        f"{100 * summary.btnet_bytes / summary.separate_bytes:.1f} % of that",
    ]


def cost_markdown(report: cost.CostReport) -> str:
    """The cost table, the measurement settings and the storage comparison, as Markdown."""
    return "\n".join([
        f"### Cost per path: {report.model} at {report.input_size}", "",
        cost.render_table(report), "",
        cost.describe_settings(report), "",
        "Storage:", *storage_lines(storage_summary(report)), "",
        f"An up-sampling baseline runs every low-resolution face through the trunk at "
        f"{report.input_size}×{report.input_size}: the trunk row is its cost at every resolution.",
    ]) + "\n"


def plot_latency(report: cost.CostReport, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Bars of median latency per image (per batch / batch size) of each path, one bar per
    timed batch size, labelled with the speedup over the trunk."""
    if not report.batch_sizes:
        raise ConfigError("the report has no latency (measured with latency=False)")
    import numpy as np

    labels = [f"{p.resolution}" + (" (trunk)" if p.is_trunk else "") for p in report.paths]
    sizes = list(report.batch_sizes)
    width = 0.8 / len(sizes)
    fig = _figure((max(5.0, 1.4 * len(labels) + 1.5), 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    for i, b in enumerate(sizes):
        values = [p.latency_ms[b] / b for p in report.paths]
        bars = ax.bar(x + (i - (len(sizes) - 1) / 2) * width, values, width, label=f"batch {b}")
        ax.bar_label(bars, labels=[f"{report.speedup(p, b):.1f}×" for p in report.paths],
                     fontsize=7, padding=2)
    ax.set_xticks(x, labels)
    ax.set_xlabel("input resolution (path)")
    ax.set_ylabel("median ms per image")
    ax.margins(y=0.15)
    ax.legend(fontsize="small")
    ax.set_title(title or f"BTNet {report.model}: latency per path ({report.threads} thread(s), "
                          f"{report.device})")
    return _save(fig, path)


def write_costs(report: cost.CostReport, out: str | os.PathLike[str], stem: str = "cost") -> list[Path]:
    """Write ``stem.md``, ``stem.json``, ``stem.png`` (FLOPs and stored parameters) and, when
    latency was measured, ``stem_latency.png`` under ``out``; return their paths."""
    out = Path(out)
    doc = {**report.to_dict(), "storage": storage_summary(report).to_dict()}
    written = [_write(out / f"{stem}.md", cost_markdown(report)),
               _write(out / f"{stem}.json", json.dumps(doc, indent=2) + "\n"),
               cost.plot_costs(report, out / f"{stem}.png")]
    if report.batch_sizes:
        written.append(plot_latency(report, out / f"{stem}_latency.png"))
    return written
