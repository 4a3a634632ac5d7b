"""Progress off a terminal: periodic log lines instead of a silent or carriage-return tqdm bar."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from btnet_adapters import cli, progress
from btnet_adapters.progress import LogProgress, progress_bar
from btnet_adapters.train.monitor import RunMonitor


class Clock:
    """A ``time.monotonic`` that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gives_periodic_lines(clock: Clock) -> None:
    out = io.StringIO()
    bar = progress_bar(total=2400, desc="embed", unit="batch", file=out, interval=10)
    assert isinstance(bar, LogProgress)
    bar.update(60)
    clock.now += 5
    bar.update(60)  # 5 s since the start: nothing yet
    assert out.getvalue() == ""
    clock.now += 7.3
    bar.update(0)  # 12.3 s: a line
    clock.now += 1
    bar.update(10)  # 1 s after that line: none
    lines = out.getvalue().splitlines()
    assert lines == ["embed 120/2400 batches (5 %), 12.3 s, ETA 3.9 min"]
    clock.now += 20
    bar.close()
    assert out.getvalue().splitlines()[-1] == "embed 130/2400 batches (5 %), 33.3 s, done"
    bar.close()  # idempotent
    assert len(out.getvalue().splitlines()) == 2


def test_short_loops_stay_silent(clock: Clock) -> None:
    out = io.StringIO()
    for _ in progress_bar(range(5), desc="quick", file=out, interval=10):
        clock.now += 1
    assert out.getvalue() == ""


def test_iteration_postfix_and_env_interval(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BTNET_PROGRESS_INTERVAL", "0")
    out = io.StringIO()
    bar = progress_bar(range(3), desc="train", unit="step", file=out)
    seen = []
    for i in bar:
        bar.set_postfix(loss=f"{1.0 / (i + 1):.3g}")
        seen.append(i)
        clock.now += 1
    assert seen == [0, 1, 2]
    lines = out.getvalue().splitlines()
    assert lines[0] == "train 1/3 steps (33 %), 1.0 s, ETA 2.0 s, loss=1"
    assert lines[-1] == "train 3/3 steps (100 %), 3.0 s, done, loss=0.333"


def test_terminal_keeps_tqdm_and_disable_shows_nothing() -> None:
    term = Terminal()
    bar = progress_bar(total=3, desc="x", file=term)
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    quiet = io.StringIO()
    off = progress_bar(range(3), disable=True, file=quiet, interval=0)
    assert list(off) == [0, 1, 2] and quiet.getvalue() == ""


def test_run_monitor_logs_steps_off_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BTNET_PROGRESS_INTERVAL", "0")
    monitor = RunMonitor(tmp_path / "log.jsonl", total=4, start=1)
    monitor.log(2, 0.5, 0.1, {"loss": 2.5})
    monitor.advance(32)
    monitor.close()
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert re.search(r"^train 2/4 steps \(50 %\), .*loss=2\.5 lr=0\.1", err, re.M), err
    assert "\r" not in err


def test_eval_verify_reports_progress_when_piped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``btnet eval verify`` with stderr not a terminal (a batch job): embedding progress lines."""
    from btnet_adapters.evaluate import write_bin

    from .test_evaluate_runners import orl_face

    monkeypatch.setenv("BTNET_PROGRESS_INTERVAL", "0")
    torch.set_num_threads(1)
    images = [orl_face(s, k) for s in range(1, 21) for k in (1, 2)]
    write_bin(tmp_path / "tiny.bin", images, [s % 2 == 0 for s in range(20)])  # 10 mixed folds
    rc = cli.main(["eval", "verify", "--model", "btnet_resnet18", "--pairs", str(tmp_path / "tiny.bin"),
                   "--settings", "112&7", "--batch-size", "2", "--no-flip", "--out", str(tmp_path / "out")])
    assert rc == 0
    err = capsys.readouterr().err
    assert re.search(r"^embedding.* \d+/\d+ imgs \(\d+ %\), [\d.]+ s", err, re.M), err
    assert "\r" not in err
