"""Explicit flags win over defaults: a default warm-up longer than ``--epochs`` shrinks to fit
(and the log says so); a warm-up the user set is never changed, and one too long is an error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from btnet_adapters import cli
from btnet_adapters.errors import ConfigError
from btnet_adapters.train.cli import config_from_args
from btnet_adapters.train.config import BranchConfig, TrunkConfig, fit_default_warmup

ORL = Path(cli.__file__).resolve().parent / "assets" / "orl"


def parse(*argv: str):
    args = cli.build_parser().parse_args(["train", *argv])
    return config_from_args(argv[0], args)


def test_default_warmup_shrinks_to_fit_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="btnet_adapters.train.cli"):
        config = parse("trunk", "--data", "d", "--out", "o", "--epochs", "1")
    assert config.warmup_epochs == pytest.approx(0.08)  # 2 of 25 epochs: the same 8 % of the run
    config.validate()
    assert "default warm-up of 2 epochs exceeds --epochs 1; using 0.08 epochs" in caplog.text


def test_fitting_default_warmup_is_untouched(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert parse("trunk", "--data", "d", "--out", "o", "--epochs", "3").warmup_epochs == 2.0
        assert parse("branch", "--data", "d", "--out", "o", "--trunk", "t", "--epochs", "0.5").warmup_epochs == 0.0
    assert "warm-up" not in caplog.text


def test_explicit_warmup_too_long_still_errors(tmp_path: Path) -> None:
    config = parse("trunk", "--data", "d", "--out", "o", "--epochs", "1", "--warmup-epochs", "2")
    assert config.warmup_epochs == 2.0
    with pytest.raises(ConfigError, match=r"warmup_epochs \(2.0\) exceeds epochs \(1.0\)"):
        config.validate()
    saved = TrunkConfig(data="d", out="o").save(tmp_path / "cfg.json")  # a saved configuration states it too
    with pytest.raises(ConfigError, match="exceeds epochs"):
        parse("trunk", "--config", str(saved), "--epochs", "1").validate()
    assert parse("trunk", "--config", str(saved), "--epochs", "1", "--warmup-epochs", "0.5").warmup_epochs == 0.5
    # a hand-written configuration without warmup_epochs keeps the default's behaviour
    (tmp_path / "short.json").write_text(json.dumps({"type": "trunk", "data": "d", "out": "o", "epochs": 1.0}))
    assert parse("trunk", "--config", str(tmp_path / "short.json")).warmup_epochs == pytest.approx(0.08)


def test_fit_default_warmup_api() -> None:
    config, note = fit_default_warmup(TrunkConfig(data="d", out="o", epochs=5.0, warmup_epochs=2.0), explicit=True)
    assert config.warmup_epochs == 2.0 and note is None
    config, note = fit_default_warmup(TrunkConfig(data="d", out="o", epochs=1.0, warmup_epochs=1.5), explicit=False)
    assert config.warmup_epochs == 1.5 and note is None  # not the default: validate() decides
    config, note = fit_default_warmup(TrunkConfig(data="d", out="o", epochs=0.5), explicit=False)
    assert config.warmup_epochs == pytest.approx(0.04) and "0.04" in note
    assert fit_default_warmup(BranchConfig(data="d", out="o", trunk="t"), explicit=False)[1] is None


def test_train_trunk_epochs_1_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``btnet train trunk --epochs 1`` (the reported failure) trains; the run records the warm-up."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "run"
    rc = cli.main(["train", "trunk", "--data", str(ORL), "--out", str(out), "--epochs", "1", "--max-steps", "1",
                   "--batch-size", "8", "--model", "btnet_resnet18", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "exceeds epochs" not in err
    assert json.loads((out / "train_config.json").read_text())["warmup_epochs"] == pytest.approx(0.08)
