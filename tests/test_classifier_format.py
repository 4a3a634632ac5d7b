"""One classifier file format: ``classifier.<name>`` tensors in safetensors, described by the
file's metadata (:func:`save_classifier`) or by the saved model's ``config.json``
(:func:`save_pretrained` with ``classifier=True``, of this or an earlier version); both load with
the training loader (:func:`load_classifier`) and with :func:`from_pretrained`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from btnet_adapters import BTNet
from btnet_adapters.data import write_synthetic_folder
from btnet_adapters.errors import ConfigError
from btnet_adapters.heads import create_head
from btnet_adapters.hub import from_pretrained, save_pretrained
from btnet_adapters.train import BranchConfig, load_classifier, save_classifier
from btnet_adapters.train.branch import load_trunk
from btnet_adapters.train.cli import main as train_cli

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:backbone 'test_resnet' has no btnet_")]

LEGACY = Path(__file__).parent / "data" / "legacy_main_3a5503d"
CLASSIFIER = "classifier.safetensors"


def trained(kind: str = "curricularface", **margin_kwargs) -> BTNet:
    """A tiny trunk with a 6-class margin head of small random weights (and a moved CurricularFace ``t``)."""
    torch.manual_seed(0)
    model = BTNet("test_resnet", input_size=32, embed_dim=16, resolutions=[], num_classes=6, margin=kind)
    if margin_kwargs:
        model.classifier = create_head(kind, 16, 6, **margin_kwargs)
    with torch.no_grad():
        for t in model.classifier.state_dict().values():
            t.add_(0.1 * torch.rand(t.shape))
    return model.eval()


def logits(head: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    embeddings = torch.randn(8, head.weight.shape[1], generator=gen)
    labels = torch.arange(8) % head.weight.shape[0]
    with torch.no_grad():
        return head.eval()(embeddings, labels)


def described(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, list[int]]]]:
    """(metadata, name -> (dtype, shape)) of a safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}, {k: (str(f.get_tensor(k).dtype), list(f.get_tensor(k).shape)) for k in f.keys()}


def record_checksum(folder: Path, name: str) -> None:
    """Record ``name``'s new bytes in ``config.json`` as save_pretrained would have."""
    config = json.loads((folder / "config.json").read_text())
    data = (folder / name).read_bytes()
    config["btnet"]["files"][name] = {"sha256": f"sha256:{hashlib.sha256(data).hexdigest()}", "bytes": len(data)}
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("margin", ["curricularface", "arcface"])
def test_saved_models_classifier_loads_with_identical_logits(margin: str, tmp_path: Path) -> None:
    model = trained(margin)
    folder = save_pretrained(model, tmp_path / "m", classifier=True)
    head = load_classifier(folder / CLASSIFIER)
    assert type(head) is type(model.classifier) and head.num_classes == 6
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in model.classifier.state_dict().items())
    assert torch.equal(logits(head), logits(model.classifier))
    # the training loader takes it as the frozen classifier of a branch run
    config = BranchConfig(data=str(tmp_path), out=str(tmp_path / "b"), trunk=str(folder), resolution=8,
                          classifier=str(folder / CLASSIFIER))
    _, frozen = load_trunk(config)
    assert torch.equal(logits(frozen), logits(model.classifier))


def test_hyper_parameters_of_a_trunk_run(tmp_path: Path) -> None:
    """A trunk run's folder records the margin head's hyper-parameters in train_config.json."""
    model = trained("arcface", scale=32.0, margin=0.3)
    folder = save_pretrained(model, tmp_path / "m", classifier=True)
    (folder / "train_config.json").write_text(json.dumps({"margin_kwargs": {"scale": 32.0, "margin": 0.3}}))
    head = load_classifier(folder / CLASSIFIER)
    assert (head.scale, head.margin) == (32.0, 0.3)
    assert torch.equal(logits(head), logits(model.classifier))


def test_legacy_folder_classifier_loads() -> None:
    """tests/data/legacy_main_3a5503d: save_pretrained(classifier=True) of an earlier main."""
    head = load_classifier(LEGACY / CLASSIFIER)
    reference = from_pretrained(LEGACY, resolutions=[], classifier=True).classifier
    assert type(head).__name__ == "CurricularFace" and tuple(head.weight.shape) == (10, 32)
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in reference.state_dict().items())
    assert torch.equal(logits(head), logits(reference))


def test_one_format_for_both_writers(tmp_path: Path) -> None:
    """save_classifier writes the saved model's tensors, plus a description in the metadata: its
    file also loads through from_pretrained(classifier=True) in a model folder."""
    model = trained("arcface", scale=32.0, margin=0.3)
    folder = save_pretrained(model, tmp_path / "m", classifier=True)
    alone = save_classifier(model.classifier, tmp_path / "alone.safetensors")
    meta, tensors = described(alone)
    assert tensors == described(folder / CLASSIFIER)[1]
    assert meta["btnet_kind"] == "btnet-classifier" and meta["margin"] == "arcface"
    head = load_classifier(alone)
    assert (head.scale, head.margin) == (32.0, 0.3) and torch.equal(logits(head), logits(model.classifier))
    (folder / CLASSIFIER).write_bytes(alone.read_bytes())
    record_checksum(folder, CLASSIFIER)
    loaded = from_pretrained(folder, classifier=True)
    assert all(torch.equal(v, loaded.classifier.state_dict()[k]) for k, v in model.classifier.state_dict().items())
    assert torch.equal(logits(load_classifier(folder / CLASSIFIER)), logits(model.classifier))  # metadata first


def test_files_that_are_not_classifiers_are_refused(tmp_path: Path) -> None:
    folder = save_pretrained(trained(), tmp_path / "m", classifier=True)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 4)
    cases = [
        (garbage, "not a readable safetensors file|beyond the limit"),
        (tmp_path / "missing.safetensors", "classifier not found"),
        (folder / "model.safetensors", "is not a btnet classifier file"),
        (LEGACY / "adapters" / "r7" / "adapter_model.safetensors", "is not a btnet classifier file"),
    ]
    loose = tmp_path / "loose" / CLASSIFIER  # a saved model's classifier without its config.json
    loose.parent.mkdir()
    loose.write_bytes((folder / CLASSIFIER).read_bytes())
    cases.append((loose, "no btnet-classifier metadata"))
    for path, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_classifier(path)
    data = bytearray((folder / CLASSIFIER).read_bytes())
    data[-1] ^= 0xFF
    (folder / CLASSIFIER).write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="corrupted or was modified"):
        load_classifier(folder / CLASSIFIER)
    record_checksum(folder, CLASSIFIER)
    config = json.loads((folder / "config.json").read_text())
    config["btnet"]["classifier"]["num_classes"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="holds 6 classes, its config.json records 7"):
        load_classifier(folder / CLASSIFIER)


def test_branch_run_takes_a_saved_models_classifier(tmp_path: Path) -> None:
    """``btnet train branch --classifier <saved folder>/classifier.safetensors``."""
    folder = save_pretrained(trained(), tmp_path / "m", classifier=True)
    data = write_synthetic_folder(tmp_path / "faces", num_identities=6, per_identity=2, size=32)
    args = ["branch", "--data", str(data), "--out", str(tmp_path / "b"), "--trunk", str(folder), "--classifier",
            str(folder / CLASSIFIER), "--resolution", "8", "--batch-size", "4", "--max-steps", "1", "--workers", "0",
            "--no-progress"]
    assert train_cli(args) == 0
    assert (tmp_path / "b" / "adapters" / "r8" / "adapter_model.safetensors").is_file()
