"""Hub artifacts: save/load of trunk + adapters, timm loading, the offline Hub cache, bad input.

Repo ids are resolved by the real ``huggingface_hub`` code against a cache folder laid out as a
download leaves it (``models--org--name/refs/main``, ``snapshots/<commit>/…`` symlinked into
``blobs/``) with ``HF_HUB_OFFLINE`` set. ``push_to_hub``'s upload needs the network: the tests
check the exact folder it uploads (:func:`stage_for_hub`) and that the real ``HfApi`` call fails
cleanly offline; the upload itself is not exercised here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
import yaml
from safetensors import safe_open

import btnet_adapters  # noqa: F401 - registers btnet_* with timm
from btnet_adapters import BTNet
from btnet_adapters.hub import (
    ArtifactError,
    ArtifactExistsError,
    FingerprintMismatchError,
    HubMixin,
    fingerprint,
    from_pretrained,
    load_adapter,
    push_to_hub,
    save_adapter,
    save_pretrained,
    stage_for_hub,
    trunk_fingerprint,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread is fastest here

COMMIT = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"
MFN = dict(embed_dim=128, backbone_kwargs=dict(num_features=128, scale=1))


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Give every tensor distinct values (fresh BN statistics would make wrong loads look right)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.rand(t.shape, generator=gen)
            if name.endswith("running_var"):
                t.mul_(0.5 + noise)
            else:
                t.add_(0.05 * (noise - 0.5))


def outputs(model: BTNet) -> dict[int, torch.Tensor]:
    """Raw embeddings of the same random batch per side, for every side the model takes."""
    with torch.no_grad():
        return {r: model(torch.randn(2, 3, r, r, generator=torch.Generator().manual_seed(r))) for r in model.resolutions}


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Place ``folder`` in ``cache`` exactly as a Hub download leaves a snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model() -> BTNet:
    torch.manual_seed(0)
    m = timm.create_model("btnet_mobilefacenet", resolutions=[7, 14], **MFN)
    perturb(m, 1)
    return m.eval()


@pytest.fixture(scope="module")
def saved(model: BTNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pretrained(model, tmp_path_factory.mktemp("art") / "btnet", license="mit",
                           metrics={"CelebA 112&14": {"accuracy": 0.931}})


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture()
def hub_cache(saved: Path, tmp_path: Path, offline: None) -> Path:
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "org/btnet-mfn", saved)
    return cache


@pytest.fixture()
def copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


# --------------------------------------------------------------------------- layout
def test_layout_config_and_adapters(model: BTNet, saved: Path) -> None:
    assert sorted(snapshot(saved)) == [
        "README.md", "adapters/r14/adapter_config.json", "adapters/r14/adapter_model.safetensors",
        "adapters/r7/adapter_config.json", "adapters/r7/adapter_model.safetensors", "config.json", "model.safetensors",
    ]
    config = json.loads((saved / "config.json").read_text())
    assert config["architecture"] == "btnet_mobilefacenet" and config["num_features"] == 128
    assert config["model_args"] == {**model.config(), "num_classes": 0}
    section = config["btnet"]
    assert section["format_version"] == 1 and section["resolutions"] == [7, 14] and section["input_size"] == 112
    assert section["routing"] == {"indicator": "max", "strategy": "ceil"}
    assert section["trunk_fingerprint"] == trunk_fingerprint(model)
    # timm's own parser reads it
    from timm.models._hub import load_model_config_from_path

    cfg, arch, args = load_model_config_from_path(saved)
    assert arch == "btnet_mobilefacenet" and args["backbone"] == "mobilefacenet" and cfg["mean"] == [0.5] * 3
    for r in (7, 14):
        folder = saved / "adapters" / f"r{r}"
        acfg = json.loads((folder / "adapter_config.json").read_text())
        assert acfg["resolution"] == r and acfg["base_model"]["trunk_fingerprint"] == trunk_fingerprint(model)
        assert acfg["plan"]["implant"] == model.branches[str(r)].plan.implant
        own = model.branch_state_dict(r)
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            assert set(f.keys()) == set(own)  # only this resolution's tensors
            assert all(torch.equal(f.get_tensor(k), own[k]) for k in own)

    with safe_open(str(saved / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())


def test_model_card(saved: Path) -> None:
    card = (saved / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "mit" and "btnet" in front["tags"]
    assert "| 7 | `trunk.layers.6`" in card and "| 14 |" in card and "≤ 7" in card and "8–14" in card
    assert "| CelebA 112&14 | accuracy | 0.931 |" in card and "Weights licence: mit" in card


def test_fingerprint() -> None:
    a = {"x": torch.arange(6.0).view(2, 3), "y": torch.tensor(3)}
    assert fingerprint(a) == fingerprint(dict(reversed(list(a.items()))))
    assert fingerprint(a) != fingerprint({**a, "x": a["x"].clone().index_fill_(1, torch.tensor([0]), 9.0)})
    assert fingerprint(a) != fingerprint({**a, "x": a["x"].double()})
    assert fingerprint(a) != fingerprint({**a, "x": a["x"].view(3, 2)})
    assert fingerprint(a) != fingerprint({"z": a["x"], "y": a["y"]})


# --------------------------------------------------------------------------- loading
def test_round_trip(model: BTNet, saved: Path) -> None:
    loaded = from_pretrained(saved)
    assert not loaded.training and loaded.branch_resolutions == (7, 14)
    expected, got = outputs(model), outputs(loaded)
    assert all(torch.equal(expected[r], got[r]) for r in expected)
    assert loaded.pretrained_cfg["architecture"] == "btnet_mobilefacenet"


def test_resolution_subset_and_missing(model: BTNet, saved: Path) -> None:
    loaded = from_pretrained(saved, resolutions=(14,))
    assert loaded.branch_resolutions == (14,)
    assert torch.equal(outputs(loaded)[14], outputs(model)[14])
    with pytest.raises(ArtifactError, match=r"no adapter for resolution\(s\) \[28\]; it holds \[7, 14\]"):
        from_pretrained(saved, resolutions=(28,))


def test_timm_file_and_local_dir(model: BTNet, saved: Path) -> None:
    expected = outputs(model)
    by_file = timm.create_model("btnet_mobilefacenet", pretrained=True, resolutions=[7, 14], **MFN,
                                pretrained_cfg_overlay=dict(file=str(saved / "model.safetensors"))).eval()
    by_dir = timm.create_model(f"local-dir:{saved}", pretrained=True).eval()
    for loaded in (by_file, by_dir):
        got = outputs(loaded)
        assert all(torch.equal(expected[r], got[r]) for r in expected)


def test_hub_repo_offline(model: BTNet, hub_cache: Path) -> None:
    expected = outputs(model)
    loaded = from_pretrained("org/btnet-mfn", cache_dir=hub_cache)
    assert loaded.pretrained_cfg["hf_hub_id"] == "org/btnet-mfn"
    pinned = from_pretrained("org/btnet-mfn", resolutions=[7], cache_dir=hub_cache, revision=COMMIT)
    by_timm = timm.create_model("hf-hub:org/btnet-mfn", pretrained=True, cache_dir=hub_cache).eval()
    for m in (loaded, by_timm):
        got = outputs(m)
        assert all(torch.equal(expected[r], got[r]) for r in expected)
    assert torch.equal(outputs(pinned)[7], expected[7])
    with pytest.raises(ArtifactError, match="could not be read from the Hub or its cache"):
        from_pretrained("org/not-cached", cache_dir=hub_cache)


@pytest.mark.slow  # a fresh interpreter importing torch and timm
def test_hub_env_offline_subprocess(saved: Path, tmp_path: Path) -> None:
    """HF_HUB_OFFLINE and HF_HUB_CACHE set in the environment before anything is imported."""
    import subprocess
    import sys

    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "org/btnet-mfn", saved)
    code = ("import torch, timm, btnet_adapters\nfrom btnet_adapters.hub import from_pretrained\n"
            "m = from_pretrained('org/btnet-mfn')\nt = timm.create_model('hf-hub:org/btnet-mfn', pretrained=True)\n"
            "print(m.branch_resolutions, sorted(t.state_dict()) == sorted(m.state_dict()))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(7, 14) True")


# --------------------------------------------------------------------------- adapters
def test_adapter_alone_local_and_hub(model: BTNet, saved: Path, tmp_path: Path, offline: None) -> None:
    alone = save_adapter(model, tmp_path / "r7", 7)
    assert sorted(snapshot(alone)) == ["adapter_config.json", "adapter_model.safetensors"]
    base = from_pretrained(saved, resolutions=[14])
    assert load_adapter(base, alone) == 7 and base.branch_resolutions == (7, 14)
    assert torch.equal(outputs(base)[7], outputs(model)[7])

    staged = stage_for_hub(model, tmp_path / "stage", adapters_only=True, resolutions=[7], repo_id="me/btnet-mfn-r7")
    put_in_hub_cache(tmp_path / "hub", "me/btnet-mfn-r7", staged)
    other = from_pretrained(saved, resolutions=[14])
    assert load_adapter(other, "me/btnet-mfn-r7", resolution=7, cache_dir=tmp_path / "hub") == 7
    assert torch.equal(outputs(other)[7], outputs(model)[7])
    with pytest.raises(ArtifactError, match="no adapter for resolution 28; it holds adapters for \\[7\\]"):
        load_adapter(other, "me/btnet-mfn-r7", resolution=28, cache_dir=tmp_path / "hub")


def test_foreign_trunk_fingerprint(saved: Path) -> None:
    other = from_pretrained(saved, resolutions=[14])
    perturb(other.trunk, 7)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    ours, theirs = trunk_fingerprint(other), json.loads((saved / "config.json").read_text())["btnet"]["trunk_fingerprint"]
    with pytest.raises(FingerprintMismatchError) as err:
        load_adapter(other, saved, resolution=7)
    assert ours in str(err.value) and theirs in str(err.value)
    assert other.branch_resolutions == (14,)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    with pytest.warns(UserWarning, match="force=True"):
        assert load_adapter(other, saved, resolution=7, force=True) == 7
    assert other.branch_resolutions == (7, 14)


def test_foreign_architecture(saved: Path) -> None:
    other = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(14,))
    with pytest.raises(ArtifactError, match="another trunk architecture.*backbone: adapter 'mobilefacenet'"):
        load_adapter(other, saved, resolution=7)
    # force=True tries it (with a warning), but the adapter's modules and tensors still do not fit
    with pytest.warns(UserWarning) as caught, pytest.raises(ArtifactError, match="does not fit"):
        load_adapter(other, saved, resolution=7, force=True)
    messages = " ".join(str(w.message) for w in caught)
    assert "another trunk architecture" in messages and "trained on trunk" in messages
    assert other.branch_resolutions == (14,)


def test_same_trunk_with_defaults_spelled_out(model: BTNet, saved: Path) -> None:
    """An adapter of a model built with a default argument given explicitly (as `btnet reproduce`
    does for insightface weights) loads onto the same trunk built without it, and vice versa."""
    kwargs = {**MFN, "backbone_kwargs": {**MFN.get("backbone_kwargs", {}), "blocks": [1, 4, 6, 2]}}
    explicit = timm.create_model("btnet_mobilefacenet", resolutions=[], **kwargs).eval()
    explicit.load_state_dict(model.state_dict(), strict=False)
    assert explicit.config()["backbone_kwargs"] != model.config()["backbone_kwargs"]
    assert load_adapter(explicit, saved, resolution=14) == 14
    assert torch.equal(outputs(explicit)[14], outputs(model)[14])
    perturb(explicit.trunk, 3)  # another trunk of the same architecture: only its fingerprint differs
    with pytest.raises(FingerprintMismatchError):
        load_adapter(explicit, saved, resolution=7)
    with pytest.warns(UserWarning, match="force=True"):
        assert load_adapter(explicit, saved, resolution=7, force=True) == 7


def test_generic_architecture_record(tmp_path: Path) -> None:
    model = BTNet.from_timm("resnet10t", resolutions=(14,), embed_dim=64).eval()
    if timm.is_model("btnet"):
        folder = save_pretrained(model, tmp_path / "g")
        rebuilt = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        assert torch.equal(outputs(rebuilt)[14], outputs(model)[14])
    else:
        with pytest.warns(UserWarning, match="no btnet_\\* zoo entry"):
            folder = save_pretrained(model, tmp_path / "g")
    assert json.loads((folder / "config.json").read_text())["architecture"] == "btnet"
    assert torch.equal(outputs(from_pretrained(folder))[14], outputs(model)[14])


# --------------------------------------------------------------------------- bad input
def test_truncated_and_corrupted_files(saved: Path, copy: Path) -> None:
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    adapter = copy / "adapters" / "r7" / "adapter_model.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in the tensor data: only the checksum can tell
    adapter.write_bytes(bytes(data))
    intact = snapshot(copy)
    with pytest.raises(ArtifactError, match="model.safetensors .* is corrupted or was modified"):
        from_pretrained(copy)
    base = from_pretrained(saved, resolutions=[14])  # the intact original: same trunk
    with pytest.raises(ArtifactError, match=r"adapter_model.safetensors\) is corrupted or was modified"):
        load_adapter(base, copy, resolution=7)
    assert snapshot(copy) == intact and base.branch_resolutions == (14,)
    # without a recorded checksum the safetensors reader itself refuses a truncated file
    cfg_path = copy / "adapters" / "r7" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["file"]
    cfg_path.write_text(json.dumps(cfg))
    adapter.write_bytes(bytes(data[:100]))
    intact = snapshot(copy)
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_adapter(base, copy, resolution=7)
    assert snapshot(copy) == intact and base.branch_resolutions == (14,)


def test_newer_format_version(copy: Path, model: BTNet) -> None:
    config = json.loads((copy / "config.json").read_text())
    config["btnet"]["format_version"] = 99
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="format version 99.*upgrade btnet_adapters"):
        from_pretrained(copy)
    acfg_path = copy / "adapters" / "r7" / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text())
    acfg["format_version"] = 2
    acfg_path.write_text(json.dumps(acfg))
    with pytest.raises(ArtifactError, match="format version 2"):
        load_adapter(model, copy, resolution=7)


def test_not_an_artifact(tmp_path: Path, model: BTNet) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    with pytest.raises(ArtifactError, match="no 'btnet' section"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        from_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="no adapter for resolution 7"):
        load_adapter(model, tmp_path, resolution=7)
    with pytest.raises(ArtifactError, match="neither an existing directory nor a Hub repo id"):
        from_pretrained(str(tmp_path / "no" / "such" / "dir"))


def test_paths_cannot_escape(copy: Path, model: BTNet) -> None:
    for bad in ("../outside", "/etc", "adapters/../../x", "..\\x"):
        with pytest.raises(ArtifactError, match="escapes the artifact directory"):
            load_adapter(model, copy, resolution=7, subfolder=bad)
    config = json.loads((copy / "config.json").read_text())
    config["btnet"]["classifier"] = {"num_classes": 3, "margin": "arcface", "file": "../../secret.safetensors"}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="escapes the artifact directory"):
        from_pretrained(copy, classifier=True)


# --------------------------------------------------------------------------- writing
def test_never_silently_overwrite(model: BTNet, copy: Path) -> None:
    (copy / "notes.txt").write_text("mine")
    before = snapshot(copy)
    with pytest.raises(ArtifactExistsError, match="overwrite=True"):
        save_pretrained(model, copy)
    assert snapshot(copy) == before
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".copy.")]  # staging removed
    save_pretrained(model, copy, resolutions=[14], overwrite=True)
    after = snapshot(copy)
    assert "adapters/r7/adapter_config.json" not in after and not (copy / "adapters" / "r7").exists()
    assert after["notes.txt"] == b"mine" and "adapters/r14/adapter_model.safetensors" in after
    assert json.loads(after["config.json"])["btnet"]["resolutions"] == [14]


def test_classifier_round_trip(tmp_path: Path) -> None:
    model = timm.create_model("btnet_mobilefacenet", resolutions=[14], num_classes=10, margin="arcface", **MFN)
    perturb(model, 3)
    folder = save_pretrained(model, tmp_path / "c")
    assert json.loads((folder / "config.json").read_text())["model_args"]["num_classes"] == 0
    plain = from_pretrained(folder)
    assert plain.classifier is None
    full = from_pretrained(folder, classifier=True)
    assert full.num_classes == 10 and type(full.classifier) is type(model.classifier)
    assert all(torch.equal(a, b) for a, b in zip(full.classifier.state_dict().values(), model.classifier.state_dict().values()))
    with pytest.raises(ArtifactError, match="holds no classifier"):
        from_pretrained(save_pretrained(model, tmp_path / "nc", classifier=False), classifier=True)


def test_stage_and_push(model: BTNet, saved: Path, tmp_path: Path, offline: None) -> None:
    """Saving is deterministic: the staged upload is byte-identical to save_pretrained's folder."""
    full = stage_for_hub(model, tmp_path / "full", repo_id="me/btnet-mfn", license="mit",
                         metrics={"CelebA 112&14": {"accuracy": 0.931}})
    staged, local = snapshot(full), snapshot(saved)
    assert staged.pop("README.md") != local.pop("README.md")
    for r in (7, 14):  # a full push's adapters name the repo their trunk goes to; a local save names none
        key = f"adapters/r{r}/adapter_config.json"
        pushed, kept = json.loads(staged.pop(key)), json.loads(local.pop(key))
        assert pushed["base_model"].pop("repo_id") == "me/btnet-mfn" and kept["base_model"].pop("repo_id") is None
        assert pushed == kept
    assert staged == local
    assert 'BTNet.from_pretrained("me/btnet-mfn")' in (full / "README.md").read_text()
    only = stage_for_hub(model, tmp_path / "only", adapters_only=True)
    assert sorted(snapshot(only)) == ["README.md", "adapters/r14/adapter_config.json",
                                      "adapters/r14/adapter_model.safetensors", "adapters/r7/adapter_config.json",
                                      "adapters/r7/adapter_model.safetensors"]
    with pytest.raises(ArtifactExistsError):
        stage_for_hub(model, full)
    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises(OfflineModeIsEnabled):  # the real HfApi refuses before uploading anything
        push_to_hub(model, "me/btnet-mfn", private=True)


def test_mixin(saved: Path, tmp_path: Path) -> None:
    assert issubclass(BTNet, HubMixin)
    loaded = BTNet.from_pretrained(saved, resolutions=[14])
    assert isinstance(loaded, BTNet) and loaded.branch_resolutions == (14,)
    assert loaded.load_adapter(saved, resolution=7) == 7
    folder = loaded.save_pretrained(tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["btnet"]["resolutions"] == [7, 14]
    assert (loaded.save_adapter(tmp_path / "a", 14) / "adapter_config.json").is_file()


def test_push_command_offline(saved: Path, offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from btnet_adapters import hub

    parser = argparse.ArgumentParser(prog="btnet")
    hub.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["push", str(saved), "me/btnet-mfn", "--adapters-only", "--resolutions", "7"])
    assert args.func(args) == 2
    assert "OfflineModeIsEnabled" in capsys.readouterr().out
