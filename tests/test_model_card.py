"""Model cards and adapter configs: the written ``README.md`` parsed back with
``huggingface_hub.ModelCard.load`` (metadata, ``model-index``, every section) and the base model
each ``adapter_config.json`` records, for local saves, pushes and models loaded from the Hub."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import numpy as np
import pytest
import timm
from huggingface_hub import ModelCard

import btnet_adapters  # noqa: F401 - registers btnet_* with timm
from btnet_adapters import BTNet
from btnet_adapters.hub import (
    _card_base_model,
    _eval_results,
    from_pretrained,
    save_pretrained,
    stage_for_hub,
    trunk_fingerprint,
)

from .test_hub import MFN, put_in_hub_cache

pytestmark = pytest.mark.usefixtures("one_thread")

SECTIONS = ["Resolutions", "Usage", "Intended use", "Out-of-scope use", "Limitations", "Bias, risks and privacy",
            "Training data", "Evaluation results", "Licence", "Citation"]
METRICS = {"CelebA 112&14": {"accuracy": 0.931, "tar@far=1e-3": np.float64(0.5), "far_rule": "closest"},
           "CelebA 112&7": {"accuracy": 0.812, "auc": float("nan")}}


@pytest.fixture(scope="module")
def model() -> BTNet:
    return timm.create_model("btnet_mobilefacenet", resolutions=[7, 14], **MFN).eval()


@pytest.fixture(scope="module")
def local(model: BTNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pretrained(model, tmp_path_factory.mktemp("card") / "local", license="cc-by-nc-4.0", metrics=METRICS)


def sections(card: ModelCard) -> dict[str, str]:
    """``## heading -> body`` of the card's text, in order."""
    parts = re.split(r"^## (.+)$", card.text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def adapter_base(folder: Path, r: int) -> dict:
    return json.loads((folder / "adapters" / f"r{r}" / "adapter_config.json").read_text())["base_model"]


def test_local_card_metadata_and_sections(model: BTNet, local: Path) -> None:
    card = ModelCard.load(local / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "timm" and data["license"] == "cc-by-nc-4.0"
    assert data["pipeline_tag"] == "image-feature-extraction"
    assert {"btnet", "face-recognition", "btnet_mobilefacenet", "mobilefacenet"} <= set(data["tags"])
    assert "base_model" not in data  # no Hub model is known; an architecture name is not a model id
    # model-index: one entry per numeric metric (text and NaN only in the table)
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert got == {("CelebA 112&14", "accuracy"): 0.931, ("CelebA 112&14", "tar@far=1e-3"): 0.5,
                   ("CelebA 112&7", "accuracy"): 0.812}
    assert all(r.task_type == "image-feature-extraction" for r in card.data.eval_results)
    assert card.data.model_name == "BTNet btnet_mobilefacenet"

    body = sections(card)
    assert list(body) == SECTIONS
    assert "surveillance" in body["Out-of-scope use"].lower() and "without review" in body["Out-of-scope use"]
    assert "consent" in body["Intended use"]
    assert all(w in body["Bias, risks and privacy"] for w in ("demographic", "Consent", "GDPR", "biometric"))
    assert "does not record the training data" in body["Training data"]
    assert "| CelebA 112&14 | far_rule | closest |" in body["Evaluation results"]
    assert "| CelebA 112&7 | auc | nan |" in body["Evaluation results"]
    licence = body["Licence"]
    assert "Weights licence: cc-by-nc-4.0" in licence and "code is MIT-licensed" in licence
    assert "@inproceedings" in body["Citation"] and "2310.09563" in body["Citation"]
    assert trunk_fingerprint(model) in card.text and "timm architecture `btnet_mobilefacenet`" in card.text


def test_local_usage_names_no_hub_repo(local: Path) -> None:
    usage = sections(ModelCard.load(local / "README.md"))["Usage"]
    assert "hf-hub:" not in usage and "local-dir:path/to/this/folder" in usage
    assert 'BTNet.from_pretrained("path/to/this/folder")' in usage


def test_local_adapter_configs_record_the_base(model: BTNet, local: Path) -> None:
    for r in (7, 14):
        base = adapter_base(local, r)
        assert base["architecture"] == "btnet_mobilefacenet" and base["repo_id"] is None
        assert base["trunk_fingerprint"] == trunk_fingerprint(model)
        assert base["model_args"]["backbone"] == "mobilefacenet"


def test_pushed_card_and_adapters(model: BTNet, tmp_path: Path) -> None:
    staged = stage_for_hub(model, tmp_path / "up", repo_id="me/btnet-mfn", license="mit", metrics=METRICS)
    card = ModelCard.load(staged / "README.md")
    usage = sections(card)["Usage"]
    assert 'timm.create_model("hf-hub:me/btnet-mfn", pretrained=True)' in usage
    assert 'BTNet.from_pretrained("me/btnet-mfn")' in usage and "local-dir:" not in usage
    assert card.data.model_name == "me/btnet-mfn" and "base_model" not in card.data.to_dict()
    assert all(adapter_base(staged, r)["repo_id"] == "me/btnet-mfn" for r in (7, 14))


def test_no_metrics_no_model_index(model: BTNet, tmp_path: Path) -> None:
    card = ModelCard.load(save_pretrained(model, tmp_path / "m") / "README.md")
    assert "model-index" not in card.data.to_dict() and "license" not in card.data.to_dict()
    body = sections(card)
    assert list(body) == SECTIONS
    assert "No evaluation results were recorded" in body["Evaluation results"]
    assert "not specified by the uploader" in body["Licence"]


def test_adapters_from_a_hub_model(model: BTNet, local: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model loaded from a Hub repo: its adapters (pushed alone elsewhere) and card name that repo."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    put_in_hub_cache(tmp_path / "hub", "org/btnet-mfn", local)
    loaded = from_pretrained("org/btnet-mfn", cache_dir=tmp_path / "hub")
    only = stage_for_hub(loaded, tmp_path / "r7", adapters_only=True, resolutions=[7], repo_id="me/btnet-mfn-r7")
    card = ModelCard.load(only / "README.md")
    assert card.data.base_model == "org/btnet-mfn"
    usage = sections(card)["Usage"]
    assert 'BTNet.from_pretrained("org/btnet-mfn")' in usage
    assert 'model.load_adapter("me/btnet-mfn-r7", resolution=7)' in usage
    base = adapter_base(only, 7)
    assert base["repo_id"] == "org/btnet-mfn" and base["trunk_fingerprint"] == trunk_fingerprint(model)
    # saved locally after loading from the Hub: the adapters still name where the trunk is
    assert adapter_base(save_pretrained(loaded, tmp_path / "again"), 14)["repo_id"] == "org/btnet-mfn"


def test_card_base_model_rules() -> None:
    def fake(hub_id=None, pretrained=False, trunk_id=None):
        return SimpleNamespace(pretrained_cfg={"hf_hub_id": hub_id},
                               config=lambda: {"backbone_kwargs": {"pretrained": pretrained}},
                               trunk=SimpleNamespace(pretrained_cfg={"hf_hub_id": trunk_id}))

    assert _card_base_model(fake("org/a"), "me/b") == "org/a"
    assert _card_base_model(fake("org/a"), "org/a") is None  # never the repo itself
    assert _card_base_model(fake(None, True, "timm/resnet18.a1_in1k"), None) == "timm/resnet18.a1_in1k"
    assert _card_base_model(fake(None, False, "timm/resnet18.a1_in1k"), None) is None  # random init
    assert _card_base_model(fake("not a repo id"), None) is None


def test_free_text_licence_is_other(model: BTNet, tmp_path: Path) -> None:
    card = ModelCard.load(save_pretrained(model, tmp_path / "m", license="Non-commercial research") / "README.md")
    assert card.data.license == "other" and card.data.license_name == "non-commercial-research"
    assert "Weights licence: Non-commercial research." in sections(card)["Licence"]


def test_eval_results_flatten_nested_metrics() -> None:
    results = _eval_results({"LFW": {"112&7": {"accuracy": 0.9}}, "speed": 3, "flag": True, "text": "n/a"})
    assert [(r.dataset_name, r.metric_type, r.metric_value) for r in results] == [
        ("LFW 112&7", "accuracy", 0.9), ("speed", "speed", 3)]
