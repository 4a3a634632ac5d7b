"""The reproduction's tables (accuracy, gains, cost per path, open set), plots and files.

Gains follow the paper (§4.2): for a cross-resolution setting ``S&r``
``Gain = (M(φ) − M(φ_hr)) / |M(φ_mr) − M(φ_hr)|``; for a same-resolution setting ``r&r``
``Gain = (M(φ) − M(φ_hr)) / |M(φ_mm at r) − M(φ_hr)|``. They are computed from the accuracy
table's own numbers; a gain whose reference row is missing, or equals φ_hr (zero
denominator), is left empty (``null`` in JSON).
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import cost
from .._json import jsonable
from .._atomic import write_text_atomic
from ..evaluate import GainWarning, cross_resolution_gain, parse_setting, same_resolution_gain
from ..evaluate.report import markdown_table, plot_accuracy_vs_resolution, write_table
from ..model import BTNet
from .config import ReproduceConfig

#: Row order and labels of the tables.
ROW_ORDER = ("phi_hr", "phi_mr", "phi_mm", "phi_bt")
LABELS = {"phi_hr": "φ_hr", "phi_mr": "φ_mr", "phi_mm": "φ_mm", "phi_bt": "φ_bt"}


@dataclass
class Report:
    """Tables of one reproduction (accuracies and rates in percent).

    Attributes:
        settings: the verification settings (table columns), e.g. ``112&7 … 112&112``.
        accuracy: one row per model: ``model``, ``what``, then accuracy (%) per setting.
        gains: the paper's gains per setting for φ_mr, φ_mm and φ_bt.
        deltas: accuracy minus φ_hr's (points) per setting.
        costs: per path: GFLOPs of BTNet and of the up-sampling baselines, stored MB.
        openset: open-set rows per model (probes degraded to ``probe_size``).
        notes: plain statements about the numbers (noise, protocol).
        text: everything as Markdown.
    """

    settings: list[str]
    accuracy: list[dict[str, Any]]
    gains: list[dict[str, Any]]
    deltas: list[dict[str, Any]]
    costs: list[dict[str, Any]]
    openset: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: str = ""

    def value(self, row: str, setting: str) -> float | None:
        """Accuracy (%) of a row (``phi_hr`` …) at a setting, ``None`` when not evaluated."""
        for r in self.accuracy:
            if r["key"] == row:
                return r.get(setting)
        return None


def accuracy_rows(evaluations: dict[str, dict[str, Any]], settings: list[str],
                  descriptions: dict[str, str]) -> list[dict[str, Any]]:
    """One row per table model; φ_mm's per-resolution models share one row."""
    rows: dict[str, dict[str, Any]] = {}
    for key, result in evaluations.items():
        row = "phi_mm" if key.startswith("phi_mm") else key
        entry = rows.setdefault(row, {"key": row, "model": LABELS[row], "what": descriptions.get(row, "")})
        for setting, res in result["verification"].items():
            entry[setting] = 100.0 * float(res["accuracy"])
    return [rows[k] for k in ROW_ORDER if k in rows]


def _gain(setting: str, m: float, hr: float, ref: float | None) -> float | None:
    if ref is None:
        return None
    fn = cross_resolution_gain if parse_setting(setting).is_cross else same_resolution_gain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GainWarning)
        value = fn(m, hr, ref)
    return None if math.isnan(value) else value


def gain_rows(accuracy: list[dict[str, Any]], settings: list[str], input_size: int
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The paper's gains and the plain differences to φ_hr, from the accuracy rows."""
    by_key = {r["key"]: r for r in accuracy}
    hr = by_key.get("phi_hr", {})
    gains, deltas = [], []
    for row in accuracy:
        if row["key"] == "phi_hr":
            continue
        g = {"key": row["key"], "model": row["model"]}
        d = {"key": row["key"], "model": row["model"]}
        for s in settings:
            if s not in row or s not in hr:
                continue
            d[s] = row[s] - hr[s]
            st = parse_setting(s)
            if st.r1 == st.r2 == input_size:
                continue
            ref_row = by_key.get("phi_mr" if st.is_cross else "phi_mm", {})
            g[s] = _gain(s, row[s], hr[s], ref_row.get(s))
        gains.append(g)
        deltas.append(d)
    return gains, deltas


def cost_rows(report: cost.CostReport, phi_mm: bool) -> list[dict[str, Any]]:
    """Per input side: FLOPs of BTNet's path and of the up-sampling baselines (always the
    trunk at full size), and what is stored for that side (BTNet: the adapter; φ_mm: a model)."""
    trunk, mb = report.trunk, 2.0 ** 20
    rows = []
    for p in sorted(report.paths, key=lambda p: p.resolution):
        row = {"input (px)": p.resolution, "BTNet path": p.name, "BTNet GFLOPs": p.flops / 1e9,
               "BTNet vs trunk FLOPs (%)": 100.0 * report.flop_ratio(p), "up-sampled GFLOPs": trunk.flops / 1e9,
               "BTNet stored (MB)": p.stored_bytes / mb,
               "BTNet stored vs full model (%)": 100.0 * p.stored_bytes / report.full_bytes}
        if phi_mm:
            row["φ_mm stored (MB)"] = report.full_bytes / mb
        rows.append(row)
    return rows


def _number(column: str) -> float:
    """The number in a column name such as ``TPIR20@FPIR=0.1 (%)`` or ``rank-5 (%)``."""
    return float(column.split("=")[-1].split("-")[-1].split(" ")[0])


def openset_rows(evaluations: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Open-set rows of the models that ran the protocol, columns in reading order: model,
    mode, AUC, TPIR at decreasing FPIR, CMC ranks, then the routing settings."""
    rows = []
    for key in ROW_ORDER:
        for row in (evaluations.get(key, {}).get("openset") or {}).get("rows", []):
            tpir = sorted((k for k in row if k.startswith("TPIR")), key=_number, reverse=True)
            ranks = sorted((k for k in row if k.startswith("rank-")), key=_number)
            order = ["mode", *(k for k in row if k.startswith("AUC")), *tpir, *ranks]
            rest = [k for k in row if k not in order and k != "model"]
            rows.append({"model": LABELS[key], **{k: row[k] for k in order + rest}})
    return rows


def noise_notes(evaluations: dict[str, dict[str, Any]], config: ReproduceConfig) -> list[str]:
    """Plain statements about how much the numbers can be trusted."""
    first = next(iter(evaluations.values()))["verification"]
    res = next(iter(first.values()))
    n = int(res["n_genuine"]) + int(res["n_impostor"])
    accs = [float(v["accuracy"]) for e in evaluations.values() for v in e["verification"].values()]
    p = min(max(sum(accs) / len(accs), 1e-3), 1 - 1e-3)
    se = 100.0 * math.sqrt(p * (1 - p) / n)
    notes = [f"{n} verification pairs ({res['n_genuine']} same, {res['n_impostor']} different): one accuracy "
             f"has a standard error of about {se:.1f} points, so differences below ~{2 * se:.1f} points are noise."]
    if config.embedded_data:
        model = "the given trunk" if config.given_trunk else "a tiny network"
        notes.insert(0, f"NOTE: this is the embedded demo: {40 - config.orl_test_identities} ORL people to train "
                        f"on, {config.orl_test_identities} to verify, {model} and a few epochs on a CPU. "
                        "Such a small set gives NOISY numbers: read the trends (up-sampling vs branches at 7 and "
                        "14 px), not the digits. The real-scale table is in the README.")
    return notes


def _cross_same(accuracy: list[dict[str, Any]], config: ReproduceConfig, size: int
                ) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    cross: dict[str, dict[int, float]] = {}
    same: dict[str, dict[int, float]] = {}
    for row in accuracy:
        for r in (*config.resolutions, size):
            if f"{size}&{r}" in row:
                cross.setdefault(row["model"], {})[r] = row[f"{size}&{r}"]
            if f"{r}&{r}" in row:
                same.setdefault(row["model"], {})[r] = row[f"{r}&{r}"]
    return cross, same


def render(report: Report, config: ReproduceConfig, seconds: dict[str, Any]) -> str:
    """The report as Markdown."""
    s = report.settings
    parts = ["# BTNet reproduction: cross-resolution verification", ""]
    parts += [f"> {n}" for n in report.notes] + [""]
    parts.append(markdown_table(report.accuracy, ["model", *s],
                                title="Verification accuracy (%), pairs 'first&second' in px"))
    parts.append("".join(f"- {row['model']}: {row['what']}\n" for row in report.accuracy))
    title = ("Gains (paper §4.2): cross vs φ_mr, same-resolution vs φ_mm; 1 = as much as the reference model, "
             "empty = reference missing or equal to φ_hr")
    if any(v is not None for row in report.gains for k, v in row.items() if k in s):
        parts.append(markdown_table(report.gains, ["model", *s], floatfmt=".2f", title=title))
    else:
        parts.append(f"### {title}\n\nNo gain is defined: cross-resolution gains need φ_mr (--phi-mr), "
                     "same-resolution gains φ_mm (--phi-mm).\n")
    parts.append(markdown_table(report.deltas, ["model", *s], floatfmt="+.2f",
                                title="Accuracy minus φ_hr (points)"))
    parts.append(markdown_table(report.costs, floatfmt=".3g",
                                title="Cost per path: FLOPs per image (2 per multiply-add) and storage per resolution"))
    if report.openset:
        routing = ("indicator", "strategy", "probe size", "probe paths")
        cols = [k for k in report.openset[0] if k not in routing]
        first = report.openset[0]
        parts.append(markdown_table(
            report.openset, cols,
            title=f"Open-set identification (%), probes degraded to {config.probe_size} px "
                  f"({config.eval_resize}), BTNet routing {first.get('indicator')}+{first.get('strategy')}"))
    resize = str(config.eval_resize) + (f"; degraded with the seeded {config.degradation!r} preset: "
                                        f"{config.eval_degradation()}" if config.degradation else "")
    parts.append(f"Protocol: the second image of each pair resized one step to r ({resize}); up-sampling models "
                 f"get it back at full size with the same resize, BTNet at its branch; flip TTA "
                 f"{'on' if config.flip else 'off'}; 10 folds, best threshold on 9 applied to the 10th. "
                 f"Training degradations: {config.train_degradation(upsample=False) if config.degradation else config.train_resize}.\n")
    stages = seconds.get("stages", {})
    listed = ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
    ran = len(seconds.get("ran", []))
    parts.append(f"Time: {sum(stages.values()):.0f} s over all stages, as recorded when each ran ({listed}). "
                 f"This call ran {ran} of {len(stages)} stages in {seconds['wall']:.0f} s wall, "
                 f"{seconds['cpu']:.0f} s CPU.\n")
    return "\n".join(parts)


def build_report(out: Path, config: ReproduceConfig, evaluations: dict[str, dict[str, Any]], bt: BTNet,
                 descriptions: dict[str, str], seconds: dict[str, Any]) -> tuple[Report, dict[str, Path]]:
    """Build the tables from the evaluations and write ``report.md``, ``report.json``,
    ``verification.md/json`` and the plots under ``out``.

    Returns:
        The :class:`Report` and the written files by role.
    """
    size = bt.input_size
    settings = config.settings(size)
    accuracy = accuracy_rows(evaluations, settings, descriptions)
    gains, deltas = gain_rows(accuracy, settings, size)
    measured = cost.measure_costs(bt, latency=False)
    costs = cost_rows(measured, "phi_mm" in {r["key"] for r in accuracy})
    report = Report(settings, accuracy, gains, deltas, costs, openset_rows(evaluations),
                    noise_notes(evaluations, config))
    plots = importlib.util.find_spec("matplotlib") is not None
    if not plots:
        report.notes.append("matplotlib is not installed, so no plots were drawn "
                            "(pip install 'btnet-adapters[plots]').")
    report.text = render(report, config, seconds)
    files: dict[str, Path] = {}
    files["report_md"] = out / "report.md"
    write_text_atomic(files["report_md"], report.text)
    doc = {"config": config.to_dict(), "settings": settings, "accuracy": accuracy, "gains": gains,
           "deltas": deltas, "costs": costs, "openset": report.openset, "notes": report.notes,
           "evaluations": evaluations, "seconds": seconds}
    files["report_json"] = out / "report.json"
    write_text_atomic(files["report_json"], json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n")
    md, js = write_table(accuracy, out / "verification", columns=["model", *settings, "what"],
                         title="Verification accuracy (%)",
                         meta={"resize": config.eval_resize.to_dict(), "flip": config.flip})
    files.update(table_md=md, table_json=js)
    if not plots:
        return report, files
    cross, same = _cross_same(accuracy, config, size)
    files["plot_cross"] = plot_accuracy_vs_resolution(
        cross, out / "accuracy_cross.png", title=f"{size}&r: second image at r px")
    files["plot_same"] = plot_accuracy_vs_resolution(
        same, out / "accuracy_same.png", title="r&r: both images at r px")
    files["plot_costs"] = cost.plot_costs(measured, out / "costs.png", title="BTNet: cost per path")
    return report, files
