"""Architecture identity of adapters: the trunk arguments an adapter records are compared with
the model's once normalised (defaults of BTNet and of the backbone's entry point filled in, tuples
as lists, weight-source arguments dropped), so a default spelled out equals one left out, and a
real difference is still refused; ``force=True`` turns a refusal into a warning, and the tensors
are still checked all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import btnet_adapters  # noqa: F401 - registers btnet_* with timm
from btnet_adapters import BTNet
from btnet_adapters.hub import (
    ArtifactError,
    FingerprintMismatchError,
    _normalised_structure,
    _same,
    _structure_diff,
    load_adapter,
    save_adapter,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: The README's MobileFaceNet (insightface's released 128-d model).
README_MFN = dict(embed_dim=128, backbone_kwargs=dict(num_features=128, scale=1))


def randomise(model: BTNet, seed: int) -> BTNet:
    """Small random weights and norm statistics (a different seed is a different trunk)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                noise = torch.rand(t.shape, generator=gen)
                t.mul_(0.5 + noise) if name.endswith("running_var") else t.add_(0.05 * (noise - 0.5))
    return model.eval()


def mfn(seed: int, resolutions: list[int], **backbone_kwargs) -> BTNet:
    kwargs = {**README_MFN, "backbone_kwargs": {**README_MFN["backbone_kwargs"], **backbone_kwargs}}
    return randomise(timm.create_model("btnet_mobilefacenet", resolutions=resolutions, **kwargs), seed)


def edit_base_args(folder: Path, **changes) -> None:
    """Change the trunk arguments an adapter config records (as another writer might spell them)."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model"]["model_args"].update(changes)
    path.write_text(json.dumps(config))


def warned(caught: pytest.WarningsRecorder, *patterns: str) -> bool:
    """Each pattern is in the message of one of the caught warnings."""
    return all(any(p in str(w.message) for w in caught) for p in patterns)


def structure(model_args: dict) -> dict:
    return _normalised_structure(model_args, BTNet)


@pytest.fixture(scope="module")
def readme_model() -> BTNet:
    """The MobileFaceNet built as the README says, without a branch for 14."""
    return mfn(1, [7])


@pytest.fixture(scope="module")
def explicit_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An r14 adapter of another MobileFaceNet trunk whose config spells out ``blocks=(1, 4, 6, 2)``."""
    trained = mfn(2, [14], blocks=(1, 4, 6, 2))
    folder = save_adapter(trained, tmp_path_factory.mktemp("explicit") / "r14", 14)
    recorded = json.loads((folder / "adapter_config.json").read_text())["base_model"]["model_args"]
    assert recorded["backbone_kwargs"]["blocks"] == [1, 4, 6, 2]
    return folder


# --------------------------------------------------------------------------- normalisation
def test_defaults_spelled_out_compare_equal() -> None:
    given = {"backbone": "mobilefacenet", "head": "backbone", "embed_dim": 128,
             "backbone_kwargs": {"num_features": 128, "scale": 1}}
    spelled = {**given, "input_size": 112, "remove": [],
               "backbone_kwargs": {"num_features": 128, "scale": 1, "blocks": (1, 4, 6, 2), "fp16": False,
                                   "pretrained": False}}
    assert structure(given) == structure(spelled)
    assert structure(given)["backbone_kwargs"]["blocks"] == [1, 4, 6, 2]  # tuples are lists
    assert _structure_diff(structure(given), structure(spelled)) == []
    # the IR-ResNet and timm ResNet entry points: their class defaults fill in the same way
    assert structure({"backbone": "iresnet50", "head": "backbone"}) == structure(
        {"backbone": "iresnet50", "head": "backbone", "backbone_kwargs": {"dropout": 0.0, "num_features": 512,
                                                                          "zero_init_residual": False}})
    assert structure({"backbone": "resnet18", "remove": ["maxpool"], "backbone_kwargs": None}) == structure(
        {"backbone": "resnet18", "remove": ["maxpool"],
         "backbone_kwargs": {"output_stride": 32, "stem_width": 64, "channels": (64, 128, 256, 512),
                             "num_classes": 0}})  # BTNet's own head: the backbone never has classes


def test_real_differences_are_still_differences() -> None:
    base = {"backbone": "mobilefacenet", "head": "backbone", "backbone_kwargs": {"scale": 1}}
    assert _structure_diff(structure({**base, "backbone_kwargs": {"scale": 1, "blocks": [1, 4, 6, 3]}}),
                           structure(base)) == ["backbone_kwargs.blocks: adapter [1, 4, 6, 3], model [1, 4, 6, 2]"]
    assert _structure_diff(structure({**base, "embed_dim": 128}), structure(base)) == [
        "embed_dim: adapter 128, model 512"]
    # test_resnet's entry point sets channels itself: the class default (64, …) is not its value,
    # so it is never filled in, and spelling it out is a difference
    assert _structure_diff(structure({"backbone": "test_resnet", "backbone_kwargs": {"channels": [64, 128, 256, 512]}}),
                           structure({"backbone": "test_resnet"})) == [
        "backbone_kwargs.channels: adapter [64, 128, 256, 512], model not given"]
    assert "backbone: adapter 'resnet18', model 'mobilefacenet'" in _structure_diff(
        structure({"backbone": "resnet18"}), structure(base))
    assert not _same(True, 1) and _same(1, 1.0) and _same((1, 2), [1, 2]) and not _same([1], [1, 2])


# --------------------------------------------------------------------------- loading
def test_readme_mobilefacenet_takes_an_adapter_that_spells_out_blocks(readme_model: BTNet,
                                                                      explicit_adapter: Path) -> None:
    """The issue's case: another trunk of the same architecture, described with ``blocks`` given.
    Only the fingerprint differs: refused as another trunk, and ``force=True`` loads it."""
    with pytest.raises(FingerprintMismatchError, match="was trained on trunk"):
        load_adapter(readme_model, explicit_adapter, resolution=14)
    assert readme_model.branch_resolutions == (7,)
    with pytest.warns(UserWarning, match="force=True") as caught:
        assert load_adapter(readme_model, explicit_adapter, resolution=14, force=True) == 14
    assert not [w for w in caught if "architecture" in str(w.message)]
    assert readme_model.branch_resolutions == (7, 14)
    tensors = load_file(str(explicit_adapter / "adapter_model.safetensors"))
    assert tensors and all(torch.equal(readme_model.branch_state_dict(14)[k], v) for k, v in tensors.items())
    readme_model.remove_branch(14)


def test_same_trunk_loads_without_force(readme_model: BTNet, tmp_path: Path) -> None:
    """An adapter trained on this very trunk, described with every default spelled out."""
    trained = mfn(1, [7, 14], blocks=[1, 4, 6, 2], fp16=False)
    folder = save_adapter(trained, tmp_path / "r14", 14)
    assert load_adapter(readme_model, folder, resolution=14) == 14
    x = torch.randn(2, 3, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(readme_model(x), trained(x))
    readme_model.remove_branch(14)


def test_architecture_difference_is_refused_and_force_tries_it(readme_model: BTNet, explicit_adapter: Path,
                                                               tmp_path: Path) -> None:
    folder = Path(tmp_path / "r14")
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((explicit_adapter / name).read_bytes())
    edit_base_args(folder, backbone_kwargs={"num_features": 128, "scale": 1, "blocks": [1, 4, 6, 3]})
    with pytest.raises(ArtifactError, match=r"another trunk architecture.*backbone_kwargs\.blocks: adapter "
                                            r"\[1, 4, 6, 3\], model \[1, 4, 6, 2\].*force=True"):
        load_adapter(readme_model, folder, resolution=14)
    assert readme_model.branch_resolutions == (7,)
    # force: a warning; the tensors are checked, and these (really from this architecture) fit
    with pytest.warns(UserWarning) as caught:
        assert load_adapter(readme_model, folder, resolution=14, force=True) == 14
    assert warned(caught, "another trunk architecture", "trying anyway (force=True)", "was trained on trunk")
    readme_model.remove_branch(14)


def test_force_cannot_load_tensors_that_do_not_fit(readme_model: BTNet, tmp_path: Path) -> None:
    """arcface_torch's default MobileFaceNet (scale 2, 512-d) is another architecture: with
    ``force=True`` its adapter is tried and refused on its tensors, and the model is unchanged."""
    wide = randomise(timm.create_model("btnet_mobilefacenet", resolutions=[14]), 3)
    folder = save_adapter(wide, tmp_path / "wide", 14)
    with pytest.raises(ArtifactError, match="another trunk architecture.*backbone_kwargs.scale: adapter 2, model 1"):
        load_adapter(readme_model, folder, resolution=14)
    before = {k: v.clone() for k, v in readme_model.state_dict().items()}
    with pytest.warns(UserWarning) as caught, pytest.raises(ArtifactError, match="does not fit"):
        load_adapter(readme_model, folder, resolution=14, force=True)
    assert warned(caught, "another trunk architecture", "was trained on trunk")
    assert readme_model.branch_resolutions == (7,)
    assert all(torch.equal(before[k], v) for k, v in readme_model.state_dict().items())


def test_iresnet_defaults_and_a_real_difference(tmp_path: Path) -> None:
    model = randomise(BTNet("iresnet18", head="backbone", resolutions=[]), 1)
    spelled = randomise(BTNet("iresnet18", head="backbone", resolutions=[14],
                              backbone_kwargs={"num_features": 512, "dropout": 0.0, "fp16": False}), 2)
    folder = save_adapter(spelled, tmp_path / "spelled", 14)
    with pytest.raises(FingerprintMismatchError):  # another trunk, not another architecture
        load_adapter(model, folder, resolution=14)
    other = randomise(BTNet("iresnet18", head="backbone", resolutions=[14], backbone_kwargs={"dropout": 0.2}), 2)
    folder = save_adapter(other, tmp_path / "dropout", 14)
    with pytest.raises(ArtifactError, match="backbone_kwargs.dropout: adapter 0.2, model 0.0"):
        load_adapter(model, folder, resolution=14)
    with pytest.warns(UserWarning) as caught:  # the same tensors: force loads it
        assert load_adapter(model, folder, resolution=14, force=True) == 14
    assert warned(caught, "another trunk architecture", "was trained on trunk")


def test_timm_resnet_defaults_and_weight_sources(tmp_path: Path) -> None:
    """timm's ResNet: class defaults and ``pretrained=False`` spelled out compare equal."""
    small = dict(input_size=32, embed_dim=16)
    model = randomise(BTNet("test_resnet", resolutions=[], **small), 1)
    spelled = randomise(BTNet("test_resnet", resolutions=[8], **small, backbone_kwargs={
        "pretrained": False, "output_stride": 32, "global_pool": "avg", "num_classes": 0}), 2)
    folder = save_adapter(spelled, tmp_path / "spelled", 8)
    with pytest.raises(FingerprintMismatchError):
        load_adapter(model, folder, resolution=8)
    with pytest.warns(UserWarning, match="force=True"):
        assert load_adapter(model, folder, resolution=8, force=True) == 8
