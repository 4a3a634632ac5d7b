"""Tests of btnet_adapters.cost: FLOPs against hand counts, stored bytes, timing, tables, plots."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from btnet_adapters import BTNet, cost
from btnet_adapters.cost import (
    CostReport,
    PathCost,
    count_flops,
    count_parameters_used,
    format_table,
    measure_costs,
    num_threads,
    plot_costs,
    render_table,
    tensor_bytes,
    time_calls,
)
from btnet_adapters.errors import ConfigError


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyBackbone(nn.Module):
    """16 → 16 → 8 → 4 pyramid: stem (3→4, stride 1), stage1 (4→8, stride 2), stage2 (8→8, stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _block(3, 4, 1)
        self.stage1 = _block(4, 8, 2)
        self.stage2 = _block(8, 8, 2)
        self.num_features = 8
        self.feature_info = [dict(module="stem", num_chs=4, reduction=1),
                             dict(module="stage1", num_chs=8, reduction=2),
                             dict(module="stage2", num_chs=8, reduction=4)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(self.stem(x)))


def _macs(side: int, cin: int, cout: int, k: int = 3) -> int:
    return side * side * cin * cout * k * k


# Hand counts (multiply-adds). Head "pool": global average pool → Linear(8, 6) → BN1d.
LINEAR = 8 * 6
TRUNK_MACS = _macs(16, 3, 4) + _macs(8, 4, 8) + _macs(4, 8, 8) + LINEAR
# Branch 8: stem and stage1's conv (stride removed) at 8, then stage2 at 4.
BRANCH8_MACS = _macs(8, 3, 4) + _macs(8, 4, 8) + _macs(4, 8, 8) + LINEAR
# Branch 4: everything at 4 (both strides removed).
BRANCH4_MACS = _macs(4, 3, 4) + _macs(4, 4, 8) + _macs(4, 8, 8) + LINEAR
PARAMS = (3 * 4 * 9 + 4 * 8 * 9 + 8 * 8 * 9) + 2 * (4 + 8 + 8) + (LINEAR + 6) + 2 * 6


@pytest.fixture(scope="module")
def tiny() -> BTNet:
    torch.manual_seed(0)
    return BTNet(TinyBackbone(), input_size=16, resolutions=(4, 8), embed_dim=6, head="pool")


@pytest.fixture(scope="module")
def report(tiny: BTNet) -> CostReport:
    return measure_costs(tiny, batch_sizes=(1, 2), repeats=2, warmup=1)


def _fake_report() -> CostReport:
    paths = (
        PathCost(7, False, 3_000_000_000, 43_000_000, 21_000_000, 21_100_000, 300, 84_400_000, {1: 10.0}),
        PathCost(112, True, 12_000_000_000, 43_000_000, 43_000_000, 43_200_000, 400, 172_800_000, {1: 40.0}),
    )
    return CostReport("iresnet50", 112, paths, 43_000_000, 43_200_000, 172_800_000, (1,), 5, 1, 1,
                      "cpu", "2.x", "x86_64")


def test_single_conv_flops_match_hand_count() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.zeros(1, 3, 10, 10)) == 2 * _macs(10, 3, 8)
    assert count_flops(conv, torch.zeros(4, 3, 10, 10)) == 4 * 2 * _macs(10, 3, 8)
    assert count_flops(nn.Linear(16, 4), torch.zeros(2, 16)) == 2 * 2 * 16 * 4


def test_parameters_used_skips_unused_modules() -> None:
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.unused = nn.Linear(4, 100)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x) + self.used(x)  # read twice, counted once

    assert count_parameters_used(Partial(), torch.zeros(1, 4)) == 4 * 3 + 3


def test_path_flops_match_hand_counts(report: CostReport) -> None:
    assert report.trunk.flops == 2 * TRUNK_MACS
    assert report.path(8).flops == 2 * BRANCH8_MACS
    assert report.path(4).flops == 2 * BRANCH4_MACS
    assert report.path(4).macs == BRANCH4_MACS
    assert report.flop_ratio(report.path(8)) == pytest.approx(BRANCH8_MACS / TRUNK_MACS)
    assert report.flop_speedup(report.path(4)) == pytest.approx(TRUNK_MACS / BRANCH4_MACS)


def test_every_path_reads_a_full_set_of_parameters(report: CostReport) -> None:
    assert report.full_params == PARAMS
    assert [p.params_used for p in report.paths] == [PARAMS] * 3


def test_stored_tensors_are_the_branch_state_dict(tiny: BTNet, report: CostReport) -> None:
    for r in tiny.branch_resolutions:
        sd = tiny.branch_state_dict(r)
        path = report.path(r)
        assert path.stored_tensors == len(sd)
        assert path.stored_numel == sum(t.numel() for t in sd.values())
        assert path.stored_bytes == sum(t.numel() * t.element_size() for t in sd.values())
    full = tiny.trunk_state_dict()
    assert (report.full_numel, report.full_bytes) == tensor_bytes(full)
    assert report.trunk.stored_bytes == report.full_bytes and report.trunk.stored_tensors == len(full)
    # Branch 8 stores the stem, stage1's conv and every norm layer (stage1.1, stage2.1, head BN1d).
    assert report.path(8).stored_params == (3 * 4 * 9 + 2 * 4) + 4 * 8 * 9 + 2 * 8 + 2 * 8 + 2 * 6


def test_latency_is_measured_per_path_and_batch(tiny: BTNet, report: CostReport) -> None:
    assert report.batch_sizes == (1, 2) and report.repeats == 2 and report.threads == 1
    for p in report.paths:
        assert set(p.latency_ms) == {1, 2} and all(ms > 0 for ms in p.latency_ms.values())
    assert report.speedup(report.trunk, 2) == 1.0
    with pytest.raises(ConfigError, match="not timed"):
        report.speedup(report.trunk, 64)
    assert tiny.training  # measuring restores the train/eval flags


def test_no_latency_mode_and_thread_restore(tiny: BTNet) -> None:
    before = torch.get_num_threads()
    quick = measure_costs(tiny, latency=False, threads=1)
    assert quick.batch_sizes == () and all(p.latency_ms == {} for p in quick.paths)
    assert torch.get_num_threads() == before
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_report_round_trips_through_json(report: CostReport) -> None:
    data = json.loads(json.dumps(report.to_dict()))
    assert data["paths"][-1]["resolution"] == 16 and set(data["paths"][0]["latency_ms"]) == {"1", "2"}


def test_time_calls_interleaves_and_rotates() -> None:
    order: list[str] = []
    times = time_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_render_markdown_table() -> None:
    text = render_table(_fake_report())
    lines = text.splitlines()
    assert lines[0] == ("| path | input | GFLOPs | FLOPs vs trunk | params used (M) | stored params (M) | "
                        "stored MB | stored vs full | ms (batch 1) | speedup (batch 1) |")
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| branch 7 | 7×7 | 3 | 25.0 % | 43 | 21 | 80.49 | 48.8 % | 10.00 | 4.00× |"
    assert lines[3] == "| trunk | 112×112 | 12 | 100.0 % | 43 | 43 | 164.8 | 100.0 % | 40.00 | 1.00× |"


def test_render_plain_table_aligns_columns() -> None:
    lines = render_table(_fake_report(), fmt="plain").splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-", " "}
    assert lines[2].startswith("branch 7 ") and lines[3].startswith("trunk    ")
    assert lines[2].index("25.0 %") == lines[3].index("100.0 %") + 1  # right-aligned numbers


def test_table_errors() -> None:
    with pytest.raises(ConfigError, match="accepted"):
        render_table(_fake_report(), fmt="html")
    with pytest.raises(ConfigError, match="cells"):
        format_table(["a", "b"], [["1"]])


def test_bad_arguments_raise_config_errors(tiny: BTNet) -> None:
    with pytest.raises(ConfigError, match="BTNet"):
        measure_costs(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="batch_sizes"):
        measure_costs(tiny, batch_sizes=())
    with pytest.raises(ConfigError, match="batch size"):
        measure_costs(tiny, batch_sizes=(0,))
    with pytest.raises(ConfigError, match="repeats"):
        measure_costs(tiny, repeats=0)
    with pytest.raises(ConfigError, match="threads"):
        measure_costs(tiny, threads=0)
    with pytest.raises(ConfigError, match="no path"):
        _fake_report().path(14)


def test_plot_is_written_atomically(tmp_path) -> None:
    out = plot_costs(_fake_report(), tmp_path / "plots" / "cost.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["cost.png"]
    with pytest.raises(ConfigError, match="suffix"):
        plot_costs(_fake_report(), tmp_path / "cost.jpg")


def test_matplotlib_is_imported_lazily() -> None:
    tree = ast.parse(Path(cost.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not any(name.startswith("matplotlib") for name in names)
