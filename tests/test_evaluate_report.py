"""Tables (Markdown + JSON, atomic) and plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from btnet_adapters.evaluate import (ProbeScores, evaluate_identification, evaluate_verification,
                                     identification_row, markdown_table, pivot,
                                     plot_accuracy_vs_resolution, plot_roc, plot_tpir_fpir,
                                     verification_row, write_table)
from btnet_adapters.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\n"


def test_markdown_table_hand_example():
    rows = [{"model": "a|b", "acc (%)": 97.254}, {"model": "c", "acc (%)": float("nan"), "x": 1}]
    md = markdown_table(rows, title="T")
    assert md == ("### T\n\n| model | acc (%) | x |\n|---|---:|---:|\n"
                  "| a\\|b | 97.25 |  |\n| c | nan | 1 |\n")
    with pytest.raises(ConfigError):
        markdown_table([])


def test_write_table_writes_markdown_and_json(tmp_path):
    rows = [{"model": "m", "setting": "112&7", "accuracy (%)": 86.1, "auc": float("inf")}]
    md, js = write_table(rows, tmp_path / "out" / "verify", title="verify",
                         meta={"resize": "cv2:bilinear:noaa", "folds": np.int64(10)})
    assert md.read_text().startswith("### verify")
    doc = json.loads(js.read_text())
    assert doc["rows"][0]["accuracy (%)"] == 86.1 and doc["rows"][0]["auc"] is None
    assert doc["meta"] == {"resize": "cv2:bilinear:noaa", "folds": 10}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["verify.json", "verify.md"]


def test_rows_from_results_and_pivot():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 8))
    y = rng.random(100) < 0.5
    b = np.where(y[:, None], a + rng.normal(0, 0.5, a.shape), rng.standard_normal(a.shape))
    res = evaluate_verification(a, b, y)
    rows = [verification_row("phi", s, res) for s in ("112&7", "7&7")]
    assert rows[0]["accuracy (%)"] == pytest.approx(100 * res.accuracy)
    assert "TAR@FAR=0.01 (%)" in rows[0]
    table = pivot(rows, "model", "setting", "accuracy (%)")
    assert table == [{"model": "phi", "112&7": rows[0]["accuracy (%)"],
                      "7&7": rows[1]["accuracy (%)"]}]
    ident = evaluate_identification(a[:20], np.arange(20), b[:20], np.arange(20), a[20:40],
                                    rank=5, progress=False)
    row = identification_row("phi", ident, "exact", indicator="max", strategy="ceil")
    assert row["mode"] == "exact" and "TPIR5@FPIR=0.01 (%)" in row and "rank-1 (%)" in row
    with pytest.raises(ConfigError):
        identification_row("phi", ident, "interpolated")


def test_plots_are_written_atomically(tmp_path):
    fpr = np.array([0.0, 1e-4, 1e-2, 1.0])
    tpr = np.array([0.0, 0.5, 0.8, 1.0])
    for path in (plot_roc({"m": (fpr, tpr)}, tmp_path / "roc.png"),
                 plot_accuracy_vs_resolution({"m": {"112&7": 86.1, "112&14": 94.0},
                                              "n": {"112&7": 80.0}}, tmp_path / "acc.png"),
                 plot_tpir_fpir({"m": (fpr, tpr)}, tmp_path / "tpir.png", steps=True)):
        assert path.read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "roc.png", "tpir.png"]
    ms = ProbeScores.from_matrix(np.eye(3), [0, 1, 2], k=1)
    assert ms.rank.tolist() == [1, 1, 1]
