"""Tests of ``btnet analyze`` (built from btnet_adapters.analysis.cli.register), the cost analysis
and the analysis reports: files written end to end, storage comparison, plots, bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from btnet_adapters import BTNet
from btnet_adapters.analysis import (
    analyse_images, analyse_model, plot_latency, storage_summary, upsampling_table, write_costs,
)
from btnet_adapters.analysis.cli import register
from btnet_adapters.cost import num_threads
from btnet_adapters.data.errors import DatasetError, MissingDataError
from btnet_adapters.errors import ConfigError, ResolutionError

ORL = Path(__file__).resolve().parents[1] / "btnet_adapters" / "assets" / "orl"
PNG = b"\x89PNG\r\n\x1a\n"


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="btnet")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_upsampling_error_command_writes_table_json_and_plot(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _run(["analyze", "upsampling-error", str(ORL), "--resolutions", "112,7,14,28",
                 "--limit", "24", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| resolution (px) |" in printed and "written:" in printed
    doc = json.loads((out / "upsampling_error.json").read_text())
    assert doc["meta"]["images"] == 24 and doc["meta"]["resize"] == "cv2:bilinear:noaa"
    assert [r["resolution"] for r in doc["rows"]] == [7, 14, 28, 112]
    maes = [r["mae"] for r in doc["rows"]]
    assert maes == sorted(maes, reverse=True) and maes[-1] == 0.0
    md = (out / "upsampling_error.md").read_text()
    assert md.count("\n| ") == 5                                # header + 4 rows
    assert (out / "upsampling_error.png").read_bytes().startswith(PNG)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_upsampling_error_command_takes_a_resize_spec(tmp_path: Path) -> None:
    assert _run(["analyze", "upsampling-error", str(ORL), "--resolutions", "14", "--limit", "4",
                 "--resize", "torch:bilinear:noaa", "--out", str(tmp_path), "--quiet"]) == 0
    doc = json.loads((tmp_path / "upsampling_error.json").read_text())
    assert doc["meta"]["resize"] == "torch:bilinear:noaa"


@pytest.mark.parametrize("argv, error, message", [
    (["--resolutions", "7,113"], ResolutionError, r"outside \[2, 112\]"),
    (["--resolutions", "1"], ResolutionError, r"outside \[2, 112\]"),
    (["--resize", "pil:bilinear:noaa"], ConfigError, "PIL always antialiases"),
    (["--resize", "bilinear"], ConfigError, "cv2:bilinear:noaa"),
    (["--limit", "0"], ConfigError, "limit"),
])
def test_upsampling_error_command_rejects_bad_settings(tmp_path: Path, argv, error, message) -> None:
    with pytest.raises(error, match=message):
        _run(["analyze", "upsampling-error", str(ORL), "--out", str(tmp_path), "--quiet", *argv])
    assert not (tmp_path / "upsampling_error.json").exists()


def test_upsampling_error_command_rejects_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        _run(["analyze", "upsampling-error", str(tmp_path / "empty"), "--quiet"])
    with pytest.raises(MissingDataError, match="not found"):
        _run(["analyze", "upsampling-error", str(tmp_path / "nope"), "--quiet"])


def test_cost_command_writes_table_json_and_plots(tmp_path: Path, capsys) -> None:
    assert _run(["analyze", "cost", "resnet10t", "--resolutions", "7,14,28", "--batch-sizes", "1,2",
                 "--repeats", "1", "--warmup", "0", "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| branch 7 | 7×7 |" in printed and "BTNet, trunk + all adapters" in printed
    doc = json.loads((tmp_path / "cost.json").read_text())
    assert [p["resolution"] for p in doc["paths"]] == [7, 14, 28, 112]
    assert set(doc["paths"][0]["latency_ms"]) == {"1", "2"}
    storage = doc["storage"]
    assert storage["btnet_bytes"] == doc["full_bytes"] + sum(storage["adapter_bytes"].values())
    assert storage["separate_bytes"] == 4 * doc["full_bytes"]
    for name in ("cost.png", "cost_latency.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)


def test_cost_command_without_latency_on_a_zoo_model(tmp_path: Path) -> None:
    assert _run(["analyze", "cost", "btnet_mobilefacenet", "--no-latency", "--out", str(tmp_path),
                 "--quiet"]) == 0
    doc = json.loads((tmp_path / "cost.json").read_text())
    assert doc["batch_sizes"] == [] and [p["resolution"] for p in doc["paths"]] == [7, 14, 28, 112]
    assert (tmp_path / "cost.png").exists() and not (tmp_path / "cost_latency.png").exists()


def test_storage_summary_and_latency_plot_need_latency(tmp_path: Path) -> None:
    with num_threads(1):                                       # the machine may be shared
        model = BTNet("resnet10t", resolutions=(14,), embed_dim=32)
    report = analyse_model(model, latency=False)
    summary = storage_summary(report)
    adapter = sum(t.numel() * t.element_size() for t in model.branch_state_dict(14).values())
    assert summary.adapter_bytes == {14: adapter}
    assert summary.btnet_bytes == report.full_bytes + adapter < summary.separate_bytes
    with pytest.raises(ConfigError, match="no latency"):
        plot_latency(report, tmp_path / "latency.png")
    written = write_costs(report, tmp_path, stem="r10")
    assert [p.name for p in written] == ["r10.md", "r10.json", "r10.png"]
    with pytest.raises(ConfigError, match="BTNet"):
        analyse_model(torch.nn.Linear(2, 2), latency=False)


def test_upsampling_table_names_settings_and_units() -> None:
    import numpy as np

    face = (np.indices((112, 112)).sum(0) % 7 * 30).astype(np.uint8)
    text = upsampling_table(analyse_images([face], resolutions=(8, 56), source="stripes"))
    assert "Luminance in [0, 1]" in text and "Source: stripes." in text
    assert text.count("\n| 8 |") == 1 and text.count("\n| 56 |") == 1
