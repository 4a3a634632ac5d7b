"""ONNX export per resolution: onnxruntime matches torch on real faces, and runs without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import btnet_adapters
from btnet_adapters import BTNet
from btnet_adapters.checkpoints import btnet_from_arcface_torch
from btnet_adapters.errors import InputImageError, ResolutionError
from btnet_adapters.export import MANIFEST_NAME, OnnxBTNet, export_onnx
from btnet_adapters.hub import ArtifactError, ArtifactExistsError
from btnet_adapters.insightface import BTNetRecognizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread is fastest here

PACKAGE_DIR = Path(btnet_adapters.__file__).parent
ORL = PACKAGE_DIR / "assets" / "orl"


def orl_faces(count: int = 8) -> list[np.ndarray]:
    """Real faces (ORL, 92×112 grey, shipped with the package) as BGR uint8 arrays."""
    paths = [ORL / f"s{s}" / f"{i}.pgm" for s in range(1, count // 2 + 1) for i in (1, 2)]
    return [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR) for p in paths]


def normalised(faces: list[np.ndarray], side: int) -> np.ndarray:
    batch = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in faces])
    return np.ascontiguousarray(((batch[..., ::-1].astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def mfn(mobilefacenet_weights: Path) -> BTNet:
    return btnet_from_arcface_torch(mobilefacenet_weights, "mobilefacenet", resolutions=(7, 14, 28))


@pytest.fixture(scope="module")
def onnx_dir(mfn: BTNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx") / "mfn"
    export_onnx(mfn, folder)
    return folder


def test_files_and_manifest(mfn: BTNet, onnx_dir: Path) -> None:
    manifest = json.loads((onnx_dir / MANIFEST_NAME).read_text())
    assert manifest["resolutions"] == [7, 14, 28, 112] and manifest["embed_dim"] == 128
    assert manifest["input"]["mean"] == [127.5] * 3 and manifest["input"]["channels"] == "RGB"
    assert manifest["routing"] == {"indicator": "max", "strategy": "ceil"}
    assert sorted(p.name for p in onnx_dir.iterdir()) == [
        "btnet_r112.onnx", "btnet_r14.onnx", "btnet_r28.onnx", "btnet_r7.onnx", MANIFEST_NAME]
    for r in (7, 14, 28, 112):
        graph = onnx.load(str(onnx_dir / f"btnet_r{r}.onnx")).graph
        dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, r, r] and graph.input[0].name == "input"
        out = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        assert out == ["batch", 128]
        assert manifest["files"][str(r)]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("side", [7, 14, 28, 112])
def test_parity_on_real_faces(mfn: BTNet, onnx_dir: Path, side: int) -> None:
    runner = OnnxBTNet(onnx_dir)
    x = normalised(orl_faces(8), side)
    with torch.no_grad():
        expected = mfn(torch.from_numpy(x)).numpy()
    assert np.abs(runner.run(side, x) - expected).max() <= 1e-4
    assert np.abs(runner.run(side, x[:1]) - expected[:1]).max() <= 1e-4  # dynamic batch


def test_fc_head_backbone(tmp_path: Path) -> None:
    """A timm backbone with BTNet's own fc embedding head (random, perturbed weights)."""
    model = BTNet.from_timm("resnet10t", resolutions=(14,), embed_dim=64).eval()
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.01 * torch.randn(t.shape))
    manifest = export_onnx(model, tmp_path / "r10")
    assert manifest["resolutions"] == [14, 112] and model.training is False
    runner = OnnxBTNet(tmp_path / "r10")
    for side in (14, 112):
        x = normalised(orl_faces(4), side)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert np.abs(runner.run(side, x) - expected).max() <= 1e-4


def test_runner_input_errors(onnx_dir: Path) -> None:
    runner = OnnxBTNet(onnx_dir)
    with pytest.raises(ResolutionError, match="exported: \\(7, 14, 28, 112\\)"):
        runner.run(56, np.zeros((1, 3, 56, 56), np.float32))
    with pytest.raises(InputImageError, match="N×3×14×14"):
        runner.run(14, np.zeros((1, 3, 28, 28), np.float32))


def test_bad_folders(onnx_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(onnx_dir, tmp_path / "copy"))
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    newer = {**manifest, "format_version": 3}
    (copy / MANIFEST_NAME).write_text(json.dumps(newer))
    with pytest.raises(ArtifactError, match="format version 3"):
        OnnxBTNet(copy)
    escape = json.loads(json.dumps(manifest))
    escape["files"]["7"]["path"] = "../../x.onnx"
    (copy / MANIFEST_NAME).write_text(json.dumps(escape))
    with pytest.raises(ArtifactError, match="escapes the artifact directory"):
        OnnxBTNet(copy)
    no_trunk = json.loads(json.dumps(manifest))
    del no_trunk["files"]["112"]
    (copy / MANIFEST_NAME).write_text(json.dumps(no_trunk))
    with pytest.raises(ArtifactError, match="no trunk model"):
        OnnxBTNet(copy)
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    model = copy / "btnet_r14.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="corrupted or was modified"):
        OnnxBTNet(copy)
    model.unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        OnnxBTNet(copy)
    with pytest.raises(ArtifactError, match="ONNX manifest not found"):
        OnnxBTNet(tmp_path)


def test_no_silent_overwrite(mfn: BTNet, onnx_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in onnx_dir.iterdir()}
    with pytest.raises(ArtifactExistsError, match="overwrite=True"):
        export_onnx(mfn, onnx_dir, resolutions=[14])
    assert {p.name: p.read_bytes() for p in onnx_dir.iterdir()} == before
    with pytest.raises(ResolutionError, match="takes sides"):
        export_onnx(mfn, onnx_dir / "x", resolutions=[56])


def test_recognizer_from_onnx_never_imports_torch(mfn: BTNet, onnx_dir: Path, tmp_path: Path) -> None:
    """The ONNX path imported as package modules with torch, timm and torchvision blocked."""
    crops = tmp_path / "crops"
    crops.mkdir()
    sizes = (9, 20, 60, 112)  # -> branches 14, 28 and the trunk
    for i, (face, size) in enumerate(zip(orl_faces(4), sizes)):
        cv2.imwrite(str(crops / f"{i}.png"), cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA))
    out = tmp_path / "emb.npy"
    code = f"""
import importlib.abc, sys, types
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
package = types.ModuleType("btnet_adapters")  # skip the package __init__ (it imports torch)
package.__path__ = [{str(PACKAGE_DIR)!r}]
sys.modules["btnet_adapters"] = package
import cv2, numpy as np
from btnet_adapters.insightface import BTNetRecognizer
rec = BTNetRecognizer(onnx_dir={str(onnx_dir)!r})
rec.prepare(ctx_id=-1)
crops = [cv2.imread({str(crops)!r} + f"/{{i}}.png") for i in range(4)]
np.save({str(out)!r}, rec.embed_crops(crops))
print([rec.route(c.shape[1], c.shape[0]) for c in crops], sorted(m for m in sys.modules if m.startswith(("torch", "timm"))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[14, 28, 112, 112] []"
    crops_bgr = [cv2.imread(str(crops / f"{i}.png")) for i in range(4)]
    expected = BTNetRecognizer(mfn).embed_crops(crops_bgr)
    assert np.abs(np.load(out) - expected).max() <= 1e-4


def test_export_command(mfn: BTNet, onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from btnet_adapters import export
    from btnet_adapters.hub import save_pretrained

    saved = save_pretrained(mfn, tmp_path / "saved", resolutions=[14])
    parser = argparse.ArgumentParser(prog="btnet")
    export.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", str(saved), str(tmp_path / "onnx"), "--resolutions", "14,112"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| 14 | btnet_r14.onnx |" in out and "| 112 | btnet_r112.onnx |" in out
    runner, reference = OnnxBTNet(tmp_path / "onnx"), OnnxBTNet(onnx_dir)
    x = normalised(orl_faces(2), 14)
    assert np.abs(runner.run(14, x) - reference.run(14, x)).max() <= 1e-5
