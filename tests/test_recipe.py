"""The branch recipe's options (tiny model, synthetic faces, CPU): AdamW and its exact resume,
cosine embedding distillation, initialising a branch from another one, label-free training,
seeded realistic degradations in training and evaluation, and the validation split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from btnet_adapters import hub
from btnet_adapters.data import DatasetError, PairedFaceDataset, UnlabeledFolderSource, open_source, write_synthetic_folder
from btnet_adapters.data.degrade import (BRANCH_DEGRADATION, DEGRADATION_PRESETS, REALISTIC_DEGRADATION,
                                         DegradationSpec)
from btnet_adapters.errors import ConfigError
from btnet_adapters.evaluate.readers import PairList
from btnet_adapters.evaluate.runners import run_verification
from btnet_adapters.reproduce.validation import make_validation_split
from btnet_adapters.resize import CV2_BILINEAR, ResizeSpec
from btnet_adapters.train import BranchConfig, train_branch
from btnet_adapters.train.branch import BranchTask, init_branch_from, load_trunk, reset_branch
from btnet_adapters.train.cli import main as cli_main
from btnet_adapters.train.distributed import DistEnv
from btnet_adapters.train.partial_fc import ShardedMarginHead

from .test_train_runs import R, branch_config, data, trunk  # noqa: F401 - the tiny faces and trunk fixtures

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:backbone 'test_resnet' has no btnet_")]
ADAPTER = Path("adapters") / f"r{R}" / hub.ADAPTER_WEIGHTS_NAME


# ---------------------------------------------------------------------- optimiser and loss
def test_adamw_run_resumes_exactly(data, trunk, tmp_path):
    """Stopped half-way and resumed, an AdamW run ends with the tensors of an uninterrupted one:
    the moments and step counts are in the checkpoint."""
    recipe = dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, epochs=2.0, embedding_loss="cosine")
    train_branch(branch_config(data, trunk, tmp_path / "ref", **recipe))
    half = branch_config(data, trunk, tmp_path / "cut", max_steps=5, **recipe)
    assert train_branch(half).step == 5
    ckpt = load_file(str(sorted((tmp_path / "cut" / "checkpoints").glob("*.safetensors"))[-1]))
    assert any(k.startswith("optim.exp_avg_sq.") for k in ckpt) and any(k.startswith("optim.step.") for k in ckpt)
    assert not any(k.startswith("momentum.") for k in ckpt)
    train_branch(half.replace(max_steps=None, resume=True))
    a, b = load_file(str(tmp_path / "ref" / ADAPTER)), load_file(str(tmp_path / "cut" / ADAPTER))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_options_at_their_defaults_are_not_written():
    """Saved configurations (and so the stage keys of earlier `btnet reproduce` runs) stay as they were."""
    written = BranchConfig(data="d", out="o", trunk="t").to_dict()
    assert not {"optimizer", "embedding_loss", "init_from", "specific", "unlabeled"} & set(written)
    assert BranchConfig.from_dict(written) == BranchConfig(data="d", out="o", trunk="t")
    assert BranchConfig(data="d", out="o", trunk="t", optimizer="adamw").to_dict()["optimizer"] == "adamw"


def test_unknown_optimizer_and_loss_are_refused(data, trunk, tmp_path):
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'.*adamw"):
        branch_config(data, trunk, tmp_path / "a", optimizer="adam").validate()
    with pytest.raises(ConfigError, match="unknown embedding_loss 'l1'"):
        branch_config(data, trunk, tmp_path / "b", embedding_loss="l1").validate()


def test_cosine_distillation_is_one_minus_the_cosine(data, trunk, tmp_path):
    cfg = branch_config(data, trunk, tmp_path / "b", embedding_loss="cosine")
    model, classifier = load_trunk(cfg)
    reset_branch(model, R)
    task = BranchTask(model, R, ShardedMarginHead(classifier, DistEnv()), DistEnv(), cfg)
    dataset = PairedFaceDataset(open_source(data), R, size=32, degradation=cfg.degradation)
    teacher, student, labels = (torch.stack([torch.as_tensor(x) for x in column])
                                for column in zip(*(dataset[(0, i)] for i in range(6))))
    parts = task.losses([teacher, student, labels], step=0)
    with torch.no_grad():
        t = model.eval().forward_with_implant(teacher, R)[0]
        s = model.train().forward_with_implant(student, R)[0]  # the student's norms use batch statistics
    expected = 1 - torch.nn.functional.cosine_similarity(s, t).mean()
    assert parts["loss_emb"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0 < parts["loss_emb"].item() < 2


def test_pure_distillation_fits_no_classifier(data, trunk, tmp_path):
    from safetensors.torch import save_file

    from btnet_adapters.train import load_trunk_folder

    from .test_train_runs import MODEL, MODEL_KW

    model, _, _ = load_trunk_folder(trunk)
    weights = tmp_path / "imported.safetensors"
    save_file({k: v.contiguous() for k, v in model.trunk.state_dict().items()}, str(weights))
    result = train_branch(branch_config(data, None, tmp_path / "b", model=MODEL, model_kwargs=MODEL_KW,
                                        trunk_weights=str(weights), cls_weight=0.0, max_steps=2))
    assert result.step == 2 and "classifier" not in result.files
    assert not (tmp_path / "b" / "classifier.safetensors").exists()


# ---------------------------------------------------------------------- initialising from another branch
def test_branch_starts_from_a_trained_branch_of_another_resolution(data, trunk, tmp_path):
    train_branch(branch_config(data, trunk, tmp_path / "b16", resolution=16, max_steps=3))
    source = tmp_path / "b16" / "adapters" / "r16"
    cfg = branch_config(data, trunk, tmp_path / "b8")
    model, _ = load_trunk(cfg)
    reset_branch(model, R)
    fresh = {k: v.clone() for k, v in model.branch_state_dict(R).items()}
    copied = init_branch_from(model, R, source)
    assert list(model.branches) == [str(R)]  # the 16-px adapter was only borrowed
    theirs = load_file(str(source / hub.ADAPTER_WEIGHTS_NAME))
    ours = model.branch_state_dict(R)
    assert copied and all(torch.equal(ours[k], theirs[k]) for k in copied)
    assert any(not torch.equal(fresh[k], ours[k]) for k in copied if k in fresh)
    assert all(torch.equal(fresh[k], ours[k]) for k in set(ours) - set(copied))
    with pytest.raises(ConfigError, match="same resolution"):
        init_branch_from(model, 16, source)
    assert list(model.branches) == [str(R)]


def test_init_from_runs_in_training(data, trunk, tmp_path):
    train_branch(branch_config(data, trunk, tmp_path / "b16", resolution=16, max_steps=2))
    result = train_branch(branch_config(data, trunk, tmp_path / "b8", max_steps=2,
                                        init_from=str(tmp_path / "b16" / "adapters" / "r16")))
    assert (tmp_path / "b8" / ADAPTER).is_file() and result.step == 2


def test_a_branch_can_own_every_module(data, trunk, tmp_path):
    """specific="all": the branch has its own copy of the layers after the implant too, and its
    adapter loads back with that plan."""
    train_branch(branch_config(data, trunk, tmp_path / "ref", max_steps=2))
    train_branch(branch_config(data, trunk, tmp_path / "all", max_steps=2, specific="all"))
    ref, every = (load_file(str(tmp_path / name / ADAPTER)) for name in ("ref", "all"))
    assert set(ref) < set(every)
    model = hub.from_pretrained(trunk, resolutions=[])
    hub.load_adapter(model, tmp_path / "all")
    assert set(model.branch_state_dict(R)) == set(every)
    with pytest.raises(ConfigError, match="specific must be"):
        branch_config(data, trunk, tmp_path / "x", specific=3).validate()


# ---------------------------------------------------------------------- label-free
@pytest.fixture(scope="module")
def crops(data, tmp_path_factory) -> Path:
    """The synthetic faces as a folder of camera crops: nested folders, names that are not identities."""
    root = tmp_path_factory.mktemp("crops")
    for i, path in enumerate(sorted(data.rglob("*.png"))):
        target = root / f"cam{i % 2}" / "2026-12-07" / f"crop_{i:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    return root


def test_unlabeled_folder_source(crops, tmp_path):
    source = open_source(crops, unlabeled=True)
    assert isinstance(source, UnlabeledFolderSource) and len(source) == 48 and source.num_classes == 1
    assert source.load(0).shape == (32, 32, 3)
    with pytest.raises(DatasetError, match="no images found"):
        UnlabeledFolderSource(tmp_path)


def test_label_free_branch_needs_no_classifier(crops, trunk, tmp_path, capsys):
    """`btnet train branch --unlabeled DIR`: distillation only, on a folder without identities."""
    code = cli_main(["branch", "--unlabeled", str(crops), "--trunk", str(trunk), "--resolution", str(R),
                     "--out", str(tmp_path / "b"), "--max-steps", "3", "--batch-size", "8", "--workers", "0",
                     "--no-progress"])
    assert code == 0, capsys.readouterr()
    saved = json.loads((tmp_path / "b" / "train_config.json").read_text())
    assert saved["unlabeled"] is True and saved["cls_weight"] == 0.0 and saved["data"] == str(crops)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert "loss_cls" not in log[-1] and log[-1]["loss_emb"] > 0
    model = hub.from_pretrained(trunk, resolutions=[])
    hub.load_adapter(model, tmp_path / "b")
    assert model.embed(np.zeros((1, R, R, 3), np.uint8)).shape == (1, 16)


def test_label_free_equals_pure_distillation_on_the_same_images(data, trunk, tmp_path):
    """Pure distillation never reads a label: --unlabeled on the same images gives the same adapter."""
    train_branch(branch_config(data, trunk, tmp_path / "labelled", cls_weight=0.0, max_steps=3))
    train_branch(branch_config(data, trunk, tmp_path / "free", cls_weight=0.0, unlabeled=True, max_steps=3))
    a, b = (load_file(str(tmp_path / name / ADAPTER)) for name in ("labelled", "free"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_label_free_refuses_a_classifier_loss(crops, trunk, tmp_path):
    with pytest.raises(ConfigError, match="cls_weight to 0"):
        BranchConfig(data=str(crops), out=str(tmp_path / "b"), trunk=str(trunk), resolution=R, unlabeled=True).validate()


# ---------------------------------------------------------------------- degradations
def test_realistic_degradation_is_seeded_and_differs_from_a_resize():
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (3, 112, 112))).float()
    a = REALISTIC_DEGRADATION.apply(x, 14, 112, np.random.default_rng(5))
    b = REALISTIC_DEGRADATION.apply(x, 14, 112, np.random.default_rng(5))
    c = REALISTIC_DEGRADATION.apply(x, 14, 112, np.random.default_rng(6))
    plain = BRANCH_DEGRADATION.apply(x, 14, 112)
    assert a.shape == (3, 14, 14) and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, plain, atol=1.0) and 0 <= a.min() and a.max() <= 255
    assert REALISTIC_DEGRADATION.apply(x, 112, 112, None) is x  # nothing to degrade at the trunk size
    with pytest.raises(ConfigError, match="random parts: pass a seeded numpy generator"):
        REALISTIC_DEGRADATION.apply(x, 14, 112)


def test_degradation_records_round_trip_and_old_records_stay_equal():
    assert DegradationSpec.from_dict(REALISTIC_DEGRADATION.to_dict()) == REALISTIC_DEGRADATION
    assert set(BRANCH_DEGRADATION.to_dict()) == {"resize", "upsample", "upsample_resize"}  # hashes of old runs
    assert DegradationSpec.named("realistic", upsample=True).upsample and set(DEGRADATION_PRESETS) >= {"realistic"}
    shift = DegradationSpec(ResizeSpec("torch", "bilinear", antialias=False), upsample=False, shift=0.5,
                            kernels=(ResizeSpec("torch", "area", antialias=False),))
    assert shift.random and not BRANCH_DEGRADATION.random


@pytest.mark.parametrize(("field", "value", "message"), [
    ("jpeg", (0, 90), "jpeg must be"), ("jpeg", (40.5, 90), "integers"), ("blur", (1.0, 0.5), "blur must be"),
    ("noise", "loud", "noise must be a"), ("shift", 2.0, "shift must be"), ("kernels", ("cv2",), "ResizeSpec"),
])
def test_bad_degradation_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        DegradationSpec(BRANCH_DEGRADATION.resize, upsample=False, **{field: value})
    with pytest.raises(ConfigError, match="unknown degradation preset 'blurry'"):
        DegradationSpec.named("blurry")


def test_training_pairs_use_the_seeded_degradation(data):
    ds = PairedFaceDataset(open_source(data), R, size=32, degradation=REALISTIC_DEGRADATION)
    a, b = ds[(0, 3)][1], ds[(0, 3)][1]
    assert a.shape == (3, R, R) and torch.equal(a, b) and not torch.equal(a, ds[(1, 3)][1])


def test_train_cli_takes_a_preset_name(data, trunk, tmp_path, capsys):
    code = cli_main(["branch", "--data", str(data), "--trunk", str(trunk), "--resolution", str(R), "--out",
                     str(tmp_path / "b"), "--degradation", "realistic", "--max-steps", "1", "--batch-size", "8",
                     "--workers", "0", "--no-progress"])
    assert code == 0, capsys.readouterr()
    saved = json.loads((tmp_path / "b" / "train_config.json").read_text())
    assert DegradationSpec.from_dict(saved["degradation"]) == REALISTIC_DEGRADATION


def test_evaluation_under_a_degradation_is_seeded_per_image(data, trunk):
    model = hub.from_pretrained(trunk, resolutions=[])
    files = sorted(str(p) for p in data.rglob("*.png"))
    pairs = PairList(tuple(map(Path, [files[0], files[1], files[0], files[9]])),
                     tuple(map(Path, [files[2], files[8], files[3], files[16]])),
                     np.array([True, False, True, False]), None, "tiny")
    runs = [run_verification(model, pairs, ["32&8"], resize=CV2_BILINEAR, flip=False, progress=False,
                             degradation=spec, n_folds=2) for spec in (REALISTIC_DEGRADATION, REALISTIC_DEGRADATION, None)]
    scores = [r.results["32&8"].roc.thresholds[1:] for r in runs]  # the sorted pair scores
    assert np.array_equal(scores[0], scores[1])
    assert scores[0].shape != scores[2].shape or not np.allclose(scores[0], scores[2])


# ---------------------------------------------------------------------- validation split
def test_validation_split_holds_out_whole_identities(tmp_path):
    faces = write_synthetic_folder(tmp_path / "faces", num_identities=10, per_identity=4, size=32)
    listing = tmp_path / "train.tsv"
    listing.write_text("path\tidentity\n" + "".join(f"{p.relative_to(faces).as_posix()}\t{p.parent.name}\n"
                                                  for p in sorted(faces.rglob("*.png"))))
    split = make_validation_split(listing, tmp_path / "val", root=faces, held_out=4, folds=2)
    fit_ids = {line.split("\t")[1] for line in split.fit.read_text().splitlines()[1:]}
    rows = [line.split("\t") for line in split.pairs.read_text().splitlines()[1:]]
    pair_ids = {p.split("/")[0] for a, b, _, _ in rows for p in (a, b)}
    assert len(fit_ids) == 6 and pair_ids == set(split.held_out) and not fit_ids & pair_ids
    assert sum(r[2] == "1" for r in rows) == sum(r[2] == "0" for r in rows) == split.num_pairs // 2
    assert make_validation_split(listing, tmp_path / "again", root=faces, held_out=4, folds=2).held_out == split.held_out
    with pytest.raises(ConfigError, match="held_out must be in 2..8"):
        make_validation_split(listing, tmp_path / "bad", root=faces, held_out=9)


def test_degradation_option_takes_a_preset_or_json():
    import argparse

    from btnet_adapters._parse import degradation_arg

    assert degradation_arg("realistic") == REALISTIC_DEGRADATION
    custom = degradation_arg('{"resize": {"backend": "torch", "filter": "area", "antialias": false}, "jpeg": [30, 60]}')
    assert custom.jpeg == (30, 60) and not custom.upsample
    for bad in ("foggy", "[1, 2]", '{"resize": {"backend": "torch"}, "jpeg": [0, 200]}'):
        with pytest.raises(argparse.ArgumentTypeError, match="--degradation realistic"):
            degradation_arg(bad)
