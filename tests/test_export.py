"""ONNX export: one graph per resolution over one shared weight file; onnxruntime matches torch on
real faces (ORL, CelebA) with the real insightface MobileFaceNet, the folder holds each distinct
tensor once, format-1 folders still load, and the recognizer runs from it without torch."""

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
from btnet_adapters.errors import OutputExistsError
from btnet_adapters.export import DATA_NAME, MANIFEST_NAME, OnnxBTNet, export_onnx, standalone_onnx
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


def external_locations(path: Path) -> set[str]:
    """The external-data files the initializers of an ONNX graph read ("" for inline ones)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {next((e.value for e in t.external_data if e.key == "location"), "")
            if t.data_location == onnx.TensorProto.EXTERNAL else "" for t in graph.initializer}


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_files_and_manifest(mfn: BTNet, onnx_dir: Path) -> None:
    manifest = json.loads((onnx_dir / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 2 and manifest["layout"] == "shared-external-data"
    assert manifest["resolutions"] == [7, 14, 28, 112] and manifest["embed_dim"] == 128
    assert manifest["input"]["mean"] == [127.5] * 3 and manifest["input"]["channels"] == "RGB"
    assert manifest["routing"] == {"indicator": "max", "strategy": "ceil"}
    assert sorted(p.name for p in onnx_dir.iterdir()) == [
        "btnet_r112.onnx", "btnet_r14.onnx", "btnet_r28.onnx", "btnet_r7.onnx", DATA_NAME, MANIFEST_NAME]
    assert manifest["data"]["path"] == DATA_NAME and manifest["data"]["bytes"] == (onnx_dir / DATA_NAME).stat().st_size
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in onnx_dir.iterdir() if p.name != MANIFEST_NAME)
    for r in (7, 14, 28, 112):
        path = onnx_dir / f"btnet_r{r}.onnx"
        graph = onnx.load(str(path), load_external_data=False).graph
        dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, r, r] and graph.input[0].name == "input"
        out = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        assert out == ["batch", 128]
        assert external_locations(path) == {DATA_NAME}  # every weight lives in the shared file
        assert path.stat().st_size < 200_000  # the graph alone
        assert manifest["files"][str(r)]["max_abs_diff"] <= 1e-4
    # branches initialised from the trunk hold the trunk's values: stored once, ~ the trunk's size
    assert manifest["data"]["bytes"] <= 1.05 * nbytes(mfn.trunk_state_dict())


def celeba_faces(celeba_dir: Path, count: int = 8) -> list[np.ndarray]:
    """Real aligned faces (CelebA test identities, 112×112) as BGR uint8 arrays."""
    rows = (celeba_dir / "splits" / "test.tsv").read_text().splitlines()[1:]
    paths = [celeba_dir / "images" / row.split("\t")[0] for row in rows[:: len(rows) // count][:count]]
    return [cv2.imread(str(p)) for p in paths]


def test_shared_weights_size_and_parity_on_celeba(mobilefacenet_weights: Path, celeba_dir: Path,
                                                  tmp_path: Path) -> None:
    """Trained branches differ from the trunk (here: perturbed copies). The folder holds each
    distinct tensor once: ≤ 1.3 × (trunk + adapters) bytes, where one self-contained file per
    resolution needs ≥ 2 ×; onnxruntime matches torch on real faces through every path."""
    model = btnet_from_arcface_torch(mobilefacenet_weights, "mobilefacenet", resolutions=(7, 14, 28)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for r in model.branch_resolutions:
            for t in model.branch_state_dict(r).values():
                if t.is_floating_point():
                    t.mul_(1 + 0.02 * torch.randn(t.shape, generator=generator))
    trunk = nbytes(model.trunk_state_dict())
    adapters = sum(nbytes(model.branch_state_dict(r)) for r in model.branch_resolutions)
    faces = celeba_faces(celeba_dir, 8)
    samples = {r: normalised(faces, r) for r in model.resolutions}
    manifest = export_onnx(model, tmp_path / "onnx", samples=samples)
    total = sum(p.stat().st_size for p in (tmp_path / "onnx").iterdir())
    assert total <= 1.3 * (trunk + adapters), (total, trunk, adapters)
    assert manifest["data"]["bytes"] >= 0.95 * (trunk + adapters)  # nothing merged that differs
    per_path = sum(f["tensor_bytes"] for f in manifest["files"].values())  # what separate files would hold
    assert per_path >= 2.0 * (trunk + adapters)
    runner = OnnxBTNet(tmp_path / "onnx")
    for r in model.resolutions:
        with torch.no_grad():
            expected = model(torch.from_numpy(samples[r])).numpy()
        assert np.abs(runner.run(r, samples[r]) - expected).max() <= 1e-4
        assert manifest["files"][str(r)]["max_abs_diff"] <= 1e-4
    own, shared = model.branch_state_dict(14), model.trunk_state_dict()
    assert all(not torch.equal(v, shared[k]) for k, v in own.items() if v.is_floating_point())


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
    no_data = json.loads(json.dumps(manifest))
    del no_data["data"]
    (copy / MANIFEST_NAME).write_text(json.dumps(no_data))
    with pytest.raises(ArtifactError, match="names no data file"):
        OnnxBTNet(copy)
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    data = copy / DATA_NAME
    original = data.read_bytes()
    data.write_bytes(original[:-64] + bytes(64))  # same size, other weights
    with pytest.raises(ArtifactError, match="weight data file .*corrupted or was modified"):
        OnnxBTNet(copy)
    data.write_bytes(original)
    model = copy / "btnet_r14.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="corrupted or was modified"):
        OnnxBTNet(copy)
    model.unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        OnnxBTNet(copy)
    with pytest.raises(ArtifactError, match="ONNX manifest not found"):
        OnnxBTNet(tmp_path)


def test_graphs_read_only_the_recorded_data_file(onnx_dir: Path, tmp_path: Path) -> None:
    """A graph whose checksum is re-recorded but that points a tensor at another file (or past
    the end of the data file) is refused before onnxruntime opens it."""
    import shutil

    from btnet_adapters.hub import _file_sha256

    for location, offset, match in (("../secret.bin", None, "reads tensor .* from '../secret.bin'"),
                                    (DATA_NAME, 10**9, "past the data file")):
        copy = Path(shutil.copytree(onnx_dir, tmp_path / f"copy{offset}"))
        path = copy / "btnet_r28.onnx"
        graph = onnx.load(str(path), load_external_data=False)
        entries = {e.key: e for e in graph.graph.initializer[0].external_data}
        entries["location"].value = location
        if offset is not None:
            entries["offset"].value = str(offset)
        onnx.save(graph, str(path))
        manifest = json.loads((copy / MANIFEST_NAME).read_text())
        manifest["files"]["28"].update(sha256=_file_sha256(path), bytes=path.stat().st_size)
        (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match=match):
            OnnxBTNet(copy)


def format_1_folder(onnx_dir: Path, target: Path) -> Path:
    """What export_onnx wrote before format 2: one self-contained file per resolution and a
    manifest of format version 1 (no data file)."""
    from btnet_adapters.hub import _file_sha256

    target.mkdir()
    manifest = json.loads((onnx_dir / MANIFEST_NAME).read_text())
    for record in manifest["files"].values():
        path = target / record["path"]
        onnx.save(onnx.load(str(onnx_dir / record["path"])), str(path))  # weights inline
        record.update(sha256=_file_sha256(path), bytes=path.stat().st_size)
        for key in ("tensors", "tensor_bytes"):
            record.pop(key)
    for key in ("data", "layout", "total_bytes"):
        manifest.pop(key)
    manifest["format_version"] = 1
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return target


def test_format_1_folders_still_load(onnx_dir: Path, tmp_path: Path) -> None:
    old = format_1_folder(onnx_dir, tmp_path / "v1")
    assert external_locations(old / "btnet_r7.onnx") == {""} and not (old / DATA_NAME).exists()
    runner, reference = OnnxBTNet(old), OnnxBTNet(onnx_dir)
    assert runner.format_version == 1 and reference.format_version == 2
    assert runner.resolutions == reference.resolutions == (7, 14, 28, 112)
    for side in (7, 112):
        x = normalised(orl_faces(4), side)
        assert np.array_equal(runner.run(side, x), reference.run(side, x))
    import shutil  # a format-1 folder whose graph reads external data is not what format 1 wrote

    shutil.copy(onnx_dir / "btnet_r7.onnx", old / "btnet_r7.onnx")
    shutil.copy(onnx_dir / DATA_NAME, old / DATA_NAME)
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    from btnet_adapters.hub import _file_sha256

    manifest["files"]["7"]["sha256"] = _file_sha256(old / "btnet_r7.onnx")
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="self-contained"):
        OnnxBTNet(old)


def test_standalone_file_and_insightface_get_model(mfn: BTNet, onnx_dir: Path, tmp_path: Path) -> None:
    """insightface's get_model routes only square inputs ≥ 112 (multiples of 16) to its ArcFace
    recognizer: the 112 graph loads in place (its data file beside it), branch graphs are not
    recognised, a copy of the graph alone fails, and standalone_onnx() makes a file that works
    anywhere."""
    import shutil

    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    x = normalised(orl_faces(4), 112)
    with torch.no_grad():
        expected = mfn(torch.from_numpy(x)).numpy()
    in_place = get_model(str(onnx_dir / "btnet_r112.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(in_place, ArcFaceONNX) and (in_place.input_mean, in_place.input_std) == (127.5, 127.5)
    assert np.abs(in_place.session.run(None, {in_place.input_name: x})[0] - expected).max() <= 1e-4
    for r in (7, 14, 28):
        assert get_model(str(onnx_dir / f"btnet_r{r}.onnx"), providers=["CPUExecutionProvider"]) is None
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(onnx_dir / "btnet_r112.onnx", alone / "r112.onnx")
    with pytest.raises(Exception, match=DATA_NAME.replace(".", "\\.")):
        get_model(str(alone / "r112.onnx"), providers=["CPUExecutionProvider"])
    out = standalone_onnx(onnx_dir, 112, alone / "btnet_r112_standalone.onnx")
    assert external_locations(out) == {""}
    moved = tmp_path / "pack" / "w600k_btnet.onnx"
    moved.parent.mkdir()
    shutil.move(out, moved)
    loaded = get_model(str(moved), providers=["CPUExecutionProvider"])
    assert isinstance(loaded, ArcFaceONNX)
    assert np.abs(loaded.session.run(None, {loaded.input_name: x})[0] - expected).max() <= 1e-4
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        standalone_onnx(onnx_dir, 112, moved)
    with pytest.raises(ResolutionError, match="exported"):
        standalone_onnx(onnx_dir, 56, tmp_path / "x.onnx")


def test_no_silent_overwrite(mfn: BTNet, onnx_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in onnx_dir.iterdir()}
    with pytest.raises(ArtifactExistsError, match="overwrite=True"):
        export_onnx(mfn, onnx_dir, resolutions=[14])
    assert {p.name: p.read_bytes() for p in onnx_dir.iterdir()} == before
    with pytest.raises(ResolutionError, match="takes sides"):
        export_onnx(mfn, onnx_dir / "x", resolutions=[56])


def test_overwrite_drops_graphs_of_the_replaced_data_file(mfn: BTNet, onnx_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(onnx_dir, tmp_path / "copy"))
    (copy / "notes.txt").write_text("mine")
    mfn.train()
    export_onnx(mfn, copy, resolutions=[14, 112], overwrite=True)
    assert mfn.training and all(m.training for m in mfn.modules())  # modes restored
    mfn.eval()
    assert sorted(p.name for p in copy.iterdir()) == [
        "btnet_r112.onnx", "btnet_r14.onnx", DATA_NAME, MANIFEST_NAME, "notes.txt"]
    assert OnnxBTNet(copy).resolutions == (14, 112)


def test_recognizer_from_onnx_never_imports_torch(mfn: BTNet, onnx_dir: Path, tmp_path: Path) -> None:
    """The ONNX path imported as package modules with torch, timm and torchvision blocked."""
    crops = tmp_path / "crops"
    crops.mkdir()
    sizes = (9, 20, 60, 112)  # -> branches 14, 28 and the trunk
    for i, (face, size) in enumerate(zip(orl_faces(4), sizes)):
        cv2.imwrite(str(crops / f"{i}.png"), cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA))
    from insightface.data import get_image

    cv2.imwrite(str(crops / "t1.png"), cv2.resize(get_image("t1"), None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA))
    stored = json.loads((Path(__file__).parent / "data" / "t1_detections.json").read_text())
    bbox, kps = stored["scales"]["0.2"]["faces"][1]["bbox"], stored["scales"]["0.2"]["faces"][1]["kps"]
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
from insightface.app.common import Face
from btnet_adapters.insightface import BTNetRecognizer
rec = BTNetRecognizer(onnx_dir={str(onnx_dir)!r})
rec.prepare(ctx_id=-1)
crops = [cv2.imread({str(crops)!r} + f"/{{i}}.png") for i in range(4)]
face = Face(bbox=np.array({bbox!r}), kps=np.array({kps!r}), det_score=0.99)  # a 20-px face of t1 at 0.2x
rec.get(cv2.imread({str(crops)!r} + "/t1.png"), face)
np.save({str(out)!r}, np.concatenate([rec.embed_crops(crops), face.embedding[None]]))
print([rec.route(c.shape[1], c.shape[0]) for c in crops], face.btnet_resolution, type(rec.session).__name__,
      sorted(rec.sessions), sorted(m for m in sys.modules if m.startswith(("torch", "timm"))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[14, 28, 112, 112] 28 InferenceSession [7, 14, 28, 112] []"
    crops_bgr = [cv2.imread(str(crops / f"{i}.png")) for i in range(4)]
    from insightface.app.common import Face

    reference = BTNetRecognizer(mfn)
    face = Face(bbox=np.array(bbox), kps=np.array(kps), det_score=0.99)
    reference.get(cv2.imread(str(crops / "t1.png")), face)
    expected = np.concatenate([reference.embed_crops(crops_bgr), face.embedding[None]])
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
    assert f"| all | {DATA_NAME} |" in out and "distinct tensors" in out and "total:" in out
    runner, reference = OnnxBTNet(tmp_path / "onnx"), OnnxBTNet(onnx_dir)
    x = normalised(orl_faces(2), 14)
    assert np.abs(runner.run(14, x) - reference.run(14, x)).max() <= 1e-5
