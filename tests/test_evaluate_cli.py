"""``btnet eval verify|identify`` end to end on ORL faces in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from btnet_adapters import cli
from btnet_adapters.evaluate import write_bin
from btnet_adapters.evaluate.cli import load_model, parse_kwargs
from btnet_adapters.errors import ConfigError
from btnet_adapters.resize import CV2_BILINEAR, PIL_BICUBIC, ResizeSpec

from .test_evaluate_runners import orl_face


@pytest.fixture
def btnet():
    """The ``btnet`` entry point (the eval commands must be registered in it)."""
    assert "btnet_adapters.evaluate.cli" in cli.COMMAND_MODULES
    torch.set_num_threads(1)
    return cli.main


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("cli")
    images, issame, pairs, gal, mated, unmated = [], [], [], [], [], []
    for s in range(1, 9):
        for k in (1, 2, 3):
            Image.fromarray(orl_face(s, k)).save(root / f"s{s}_{k}.png")
            if s <= 5:
                (gal if k < 3 else mated).append(f"s{s}_{k}.png\ts{s}")
            else:
                unmated.append(f"s{s}_{k}.png")
    for i in range(10):
        a, b = (i % 8 + 1, 1), ((i % 8 + 1, 2) if i % 2 == 0 else ((i + 1) % 8 + 1, 3))
        images += [orl_face(*a), orl_face(*b)]
        issame.append(i % 2 == 0)
        pairs.append(f"s{a[0]}_{a[1]}.png\ts{b[0]}_{b[1]}.png\t{int(i % 2 == 0)}")
    write_bin(root / "tiny.bin", images, issame)
    for name, lines in (("pairs.tsv", pairs), ("g.tsv", gal), ("m.tsv", mated),
                        ("u.tsv", unmated)):
        (root / name).write_text("\n".join(lines) + "\n")
    from safetensors.torch import save_file
    import timm

    trunk = timm.create_model("resnet18", num_classes=24)
    save_file(trunk.state_dict(), str(root / "trunk.safetensors"))
    return root


def test_verify_bin_with_baseline(btnet, data, tmp_path, capsys):
    out = tmp_path / "out"
    rc = btnet(["eval", "verify", "--model", "bt=btnet_resnet18", "--pairs",
                str(data / "tiny.bin"), "--settings", "112&7,7&7,112&112", "--baseline",
                "hr=" + str(data / "trunk.safetensors"), "--trunk-arch", "resnet18",
                "--trunk-kwargs", "num_classes=24", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| bt | 112&7 |" in text and "| hr | 7&7 |" in text and "wrote" in text
    for f in ("verification.md", "verification.json", "verification_accuracy.png",
              "verification_roc.png", "verification_gains.md", "verification_gains.json"):
        assert (out / f).stat().st_size > 0, f
    doc = json.loads((out / "verification.json").read_text())
    assert doc["meta"]["resize"] == str(CV2_BILINEAR)
    rows = {(r["model"], r["setting"]): r for r in doc["rows"]}
    assert rows[("bt", "112&7")]["path"] == "112&7"
    assert rows[("hr", "112&7")]["path"] == "112&112"  # the baseline up-samples
    gains = json.loads((out / "verification_gains.json").read_text())["rows"]
    assert {g["setting"] for g in gains} == {"112&7", "7&7", "112&112"}


def test_verify_tsv_and_identify(btnet, data, tmp_path, capsys):
    out = tmp_path / "o"
    rc = btnet(["eval", "verify", "--model", "btnet_resnet18", "--pairs", str(data / "pairs.tsv"),
                "--images", str(data), "--settings", "112&14", "--no-flip", "--out", str(out),
                "--quiet"])
    assert rc == 0 and (out / "verification.md").is_file()
    rc = btnet(["eval", "identify", "--model", "btnet_resnet18", "--gallery", str(data / "g.tsv"),
                "--mated", str(data / "m.tsv"), "--unmated", str(data / "u.tsv"), "--images",
                str(data), "--indicator", "max", "--strategy", "ceil", "--mode", "reference",
                "--rank", "3", "--probe-size", "12", "--all-routings", "--out", str(out),
                "--quiet"])
    assert rc == 0
    for f in ("identification.md", "identification.json", "identification_tpir_fpir.png",
              "identification_routings.md", "identification_routings.json"):
        assert (out / f).stat().st_size > 0, f
    doc = json.loads((out / "identification.json").read_text())
    assert doc["meta"]["resize"] == str(PIL_BICUBIC)
    assert doc["rows"][0]["probe paths"] == "14 at 14px"  # 12 px, max+ceil → branch 14
    assert len(json.loads((out / "identification_routings.json").read_text())["rows"]) == 9
    assert "TPIR3@FPIR=0.3 (%)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--pairs", "{d}/pairs.tsv", "--images", "{d}/nowhere"], "do not exist"),
    (["--pairs", "{d}/tiny.bin", "--settings", "112&x"], "112&7"),
    (["--pairs", "{d}/pairs.tsv"], "--images is needed"),
    (["--pairs", "{d}/tiny.bin", "--baseline", "{d}/trunk.safetensors"], "--trunk-arch"),
    (["--pairs", "{d}/tiny.bin", "--baseline", "{d}/missing.onnx"], "not found"),
    (["--pairs", "{d}/tiny.bin", "--baseline", "btnet_resnet18"], "distinct names"),
])
def test_verify_errors(btnet, data, tmp_path, capsys, argv, message):
    args = ["eval", "verify", "--model", "btnet_resnet18", "--out", str(tmp_path), "--quiet"]
    rc = btnet(args + [a.format(d=data) for a in argv])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_helpers_and_saved_folder(data, tmp_path):
    assert ResizeSpec.parse("cv2:bilinear:noaa") == CV2_BILINEAR
    with pytest.raises(ConfigError, match="resize spec"):
        ResizeSpec.parse("bilinear")
    assert parse_kwargs("num_features=128,scale=1,act=prelu") == {
        "num_features": 128, "scale": 1, "act": "prelu"}
    with pytest.raises(ConfigError, match="name=value"):
        parse_kwargs("oops")
    model = load_model(str(data / "trunk.safetensors"), trunk_arch="resnet18",
                       trunk_kwargs="num_classes=24", resolutions=[14])
    assert model.embed_dim == 24 and model.branch_resolutions == (14,)
    hub = pytest.importorskip("btnet_adapters.hub")
    hub.save_pretrained(model, tmp_path / "saved")
    again = load_model(str(tmp_path / "saved"))
    x = torch.randn(2, 3, 14, 14)
    with torch.no_grad():
        np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
