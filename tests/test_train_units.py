"""Unit tests of btnet_adapters.train: configs, schedule, data order, sharded margin head,
global batch norm, checkpoint files, log/plot and the command-line parser."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d

from btnet_adapters.data import BRANCH_DEGRADATION, DegradationSpec
from btnet_adapters.errors import ConfigError, CorruptFileError
from btnet_adapters.heads import HEADS, create_head
from btnet_adapters.resize import PIL_BILINEAR
from btnet_adapters.train import BranchConfig, TrunkConfig, learning_rate, load_config
from btnet_adapters.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from btnet_adapters.train.cli import config_from_args, register
from btnet_adapters.train.distributed import DistEnv, GlobalBatchNorm, global_batch_norms, shard_range
from btnet_adapters.train.monitor import RunMonitor, plot_losses, read_log
from btnet_adapters.train.partial_fc import ShardedMarginHead
from btnet_adapters.train.sampler import EpochBatchSampler


# ---------------------------------------------------------------------- configs
def test_configs_round_trip_through_json(tmp_path):
    trunk = TrunkConfig(data="d", out="o", model="btnet_resnet18", model_kwargs={"embed_dim": 128},
                        margin="arcface", margin_kwargs={"scale": 32.0}, multires="v2", amp="off")
    branch = BranchConfig(data="d", out="o", trunk="runs/t", resolution=7, embedding_weight=0.0,
                          degradation=DegradationSpec(PIL_BILINEAR, upsample=False))
    for cfg in (trunk, branch):
        path = cfg.save(tmp_path / f"{cfg.kind}.json")
        back = load_config(path)
        assert type(back) is type(cfg) and back == cfg
        assert json.loads(path.read_text())["type"] == cfg.kind


def test_config_defaults_follow_the_reference():
    trunk, branch = TrunkConfig(), BranchConfig()
    assert (trunk.momentum, trunk.weight_decay, trunk.lr_power, trunk.clip_grad_norm) == (0.9, 5e-4, 2.0, 5.0)
    assert (trunk.lr, trunk.epochs, trunk.warmup_epochs, trunk.margin) == (0.2, 25.0, 2.0, "curricularface")
    assert (branch.lr, branch.epochs, branch.warmup_epochs) == (0.02, 10.0, 0.0)
    assert (branch.distill_weight, branch.feature_weight, branch.embedding_weight) == (0.5, 1.0, 1.0)
    assert branch.degradation == BRANCH_DEGRADATION


@pytest.mark.parametrize("change, message", [
    ({"amp": "fp8"}, "amp"),
    ({"amp": "fp16", "device": "cpu"}, "needs CUDA"),
    ({"lr": -1.0}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"momentum": 1.0}, "momentum"),
    ({"warmup_epochs": 30.0}, "warmup_epochs"),
    ({"margin": "softmax"}, "margin"),
    ({"multires": "v9"}, "multires"),
    ({"multires": "mm"}, "resolution"),
    ({"model_kwargs": {"resolutions": [7]}}, "resolutions"),
    ({"data": ""}, "data"),
])
def test_trunk_config_rejects_bad_values(change, message):
    cfg = TrunkConfig(data="d", out="o").replace(**change)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


@pytest.mark.parametrize("change, message", [
    ({"trunk": None}, "either trunk"),
    ({"model": "btnet_resnet18"}, "either trunk"),
    ({"trunk": None, "model": "btnet_resnet18"}, "trunk_weights"),
    ({"degradation": DegradationSpec(PIL_BILINEAR, upsample=True)}, "upsample"),
    ({"distill_weight": -0.5}, "distill_weight"),
    ({"cls_weight": 0.0, "distill_weight": 0.0}, "nothing would train"),
])
def test_branch_config_rejects_bad_values(change, message):
    cfg = BranchConfig(data="d", out="o", trunk="t").replace(**change)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_config_loading_names_the_problem(tmp_path):
    (tmp_path / "bad.json").write_text('{"type": "trunk", "lr": 0.1, "learning_rate": 2}')
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "kind.json").write_text('{"type": "eval"}')
    with pytest.raises(ConfigError, match="unknown configuration type"):
        load_config(tmp_path / "kind.json")
    with pytest.raises(ConfigError, match="not a 'branch'"):
        BranchConfig.from_dict(TrunkConfig().to_dict())
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")


def test_differences_ignore_runtime_fields():
    a = BranchConfig(data="d", out="o", trunk="t")
    assert a.differences(a.replace(max_steps=5, workers=0, progress=False, resume=True, batch_size=4)) == {}
    assert set(a.differences(a.replace(lr=0.5, seed=3))) == {"lr", "seed"}


# ---------------------------------------------------------------------- schedule and data order
def test_learning_rate_warms_up_then_decays_polynomially():
    lrs = [learning_rate(s, base_lr=0.2, total_steps=10, warmup_steps=4, power=2.0) for s in range(10)]
    assert lrs[:4] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert lrs[4:] == pytest.approx([0.2 * (1 - k / 6) ** 2 for k in range(6)])
    assert learning_rate(0, base_lr=0.02, total_steps=5) == pytest.approx(0.02)
    with pytest.raises(ConfigError):
        learning_rate(0, base_lr=0.1, total_steps=3, warmup_steps=4)


def test_sampler_world_slices_make_the_single_process_batch():
    one = list(EpochBatchSampler(50, 8, seed=3, start_step=0, stop_step=12))
    halves = [list(EpochBatchSampler(50, 4, seed=3, start_step=0, stop_step=12, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*halves)] == one
    assert len(one) == 12 and all(len(b) == 8 for b in one)
    assert [k[0] for k in one[5]] == [0] * 8 and [k[0] for k in one[6]] == [1] * 8  # 6 steps per epoch
    epoch0 = {i for b in one[:6] for _, i in b}
    assert len(epoch0) == 48  # a permutation, the last 2 samples dropped
    assert sorted(one[0]) != sorted(one[6])


def test_sampler_resumes_with_the_same_batches():
    full = list(EpochBatchSampler(40, 4, seed=0, start_step=0, stop_step=25))
    assert list(EpochBatchSampler(40, 4, seed=0, start_step=13, stop_step=25)) == full[13:]
    assert len(EpochBatchSampler(40, 4, seed=0, start_step=13, stop_step=25)) == 12
    with pytest.raises(ConfigError, match="cannot fill one global batch"):
        EpochBatchSampler(6, 4, seed=0, start_step=0, stop_step=1, world=2)


# ---------------------------------------------------------------------- sharded margin head
@pytest.mark.parametrize("name", list(HEADS))
def test_sharded_head_in_one_process_equals_the_head(name):
    head = create_head(name, 16, 12).train()
    sharded = ShardedMarginHead(head, DistEnv()).train()
    e1 = torch.randn(10, 16, requires_grad=True)
    e2 = e1.detach().clone().requires_grad_()
    labels = torch.randint(0, 12, (10,))
    ref = F.cross_entropy(head(e1, labels), labels)
    ref.backward()
    out = sharded(e2, labels)
    out.backward()
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(e1.grad, e2.grad, atol=1e-6)
    assert torch.allclose(head.weight.grad, sharded.weight.grad, atol=1e-5)
    for key, value in head.state_dict().items():  # running statistics moved the same way
        if key != "weight":
            assert torch.allclose(value, sharded.head.state_dict()[key])
    full = sharded.to_margin_head()
    assert type(full) is type(head) and torch.equal(full.weight, head.weight)


def test_sharded_head_sampling_keeps_batch_classes():
    head = ShardedMarginHead(create_head("arcface", 8, 100), DistEnv(), sample_rate=0.1, seed=1).train()
    labels = torch.tensor([3, 3, 50, 97])
    index = head._sample(labels, step=5)
    assert len(index) == 10 and {3, 50, 97} <= set(index.tolist())
    assert torch.equal(index, head._sample(labels, step=5))
    assert not torch.equal(index, head._sample(labels, step=6))
    loss = head(torch.randn(4, 8), labels, step=5)
    loss.backward()
    touched = head.weight.grad.abs().sum(1).nonzero().squeeze(1)
    assert set(touched.tolist()) <= set(index.tolist())


def test_sharded_head_refuses_bad_labels():
    head = ShardedMarginHead(create_head("cosface", 8, 5), DistEnv())
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(2, 8), torch.tensor([0, 5]))


def test_shard_ranges_cover_every_class_once():
    for total, world in ((10, 3), (7, 7), (1000, 8)):
        ranges = [shard_range(total, DistEnv(rank=r, world=world)) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


def test_global_batch_norms_swap_and_restore():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), BatchNormAct2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    weight = net[1].weight
    with global_batch_norms(net, DistEnv(rank=0, world=2)) as skipped:
        assert type(net[1]) is GlobalBatchNorm and net[1].weight is weight
        assert type(net[3][0]) is GlobalBatchNorm and isinstance(net[2], BatchNormAct2d)
        assert skipped == ["2"]
        assert set(net.state_dict()) == set(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), BatchNormAct2d(4),
                                                          nn.Sequential(nn.BatchNorm1d(4))).state_dict())
        x = torch.randn(6, 4, 3, 3)  # no process group: plain batch norm
        assert torch.allclose(net[1](x), F.batch_norm(x, None, None, net[1].weight, net[1].bias, True), atol=1e-5)
    assert type(net[1]) is nn.BatchNorm2d and net[1].weight is weight
    with global_batch_norms(net, DistEnv()):  # one process: nothing to do
        assert type(net[1]) is nn.BatchNorm2d


# ---------------------------------------------------------------------- checkpoints, log, plot
def test_checkpoints_are_atomic_named_and_pruned(tmp_path):
    for step in (3, 6, 9):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {"note": "x"}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 9]
    tensors, meta = load_checkpoint(latest_checkpoint(tmp_path))
    assert meta == {"note": "x", "step": 9} and torch.equal(tensors["w"], torch.full((2,), 9.0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "ckpt-000000012.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="cannot read checkpoint"):  # delete it to resume from step 9
        load_checkpoint(latest_checkpoint(tmp_path))


def test_monitor_writes_jsonl_cuts_it_on_resume_and_plots(tmp_path):
    log = tmp_path / "log.jsonl"
    mon = RunMonitor(log, total=6, progress=False)
    for step in range(1, 7):
        mon.advance(8)
        mon.log(step, step / 3, 0.1, {"loss": 10.0 / step, "loss_cls": 5.0 / step})
    mon.close()
    records = read_log(log)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["images_per_s"] > 0 and records[-1]["loss_cls"] == pytest.approx(5 / 6)
    RunMonitor(log, total=6, start=4, progress=False).close()
    assert [r["step"] for r in read_log(log)] == [1, 2, 3, 4]
    plot = plot_losses(log, tmp_path / "loss.png")
    assert plot is not None and plot.read_bytes()[:4] == b"\x89PNG"
    assert plot_losses(tmp_path / "none.jsonl", tmp_path / "none.png") is None


# ---------------------------------------------------------------------- command line
def test_cli_registers_train_commands_and_builds_configs(tmp_path):
    parser = argparse.ArgumentParser(prog="btnet")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "branch", "--trunk", "runs/t", "--resolution", "7", "--data", "faces",
                              "--out", "runs/b7", "--no-flip", "--embedding-weight", "0", "--resize",
                              "cv2:bilinear:noaa", "--clip-grad-norm", "none", "--model-kwargs", '{"a": 1}'])
    cfg = config_from_args("branch", args)
    assert callable(args.func)
    assert isinstance(cfg, BranchConfig) and cfg.resolution == 7 and cfg.trunk == "runs/t"
    assert cfg.flip is False and cfg.embedding_weight == 0.0 and cfg.clip_grad_norm is None
    assert cfg.degradation.resize.backend == "cv2" and cfg.degradation.upsample is False
    assert cfg.model_kwargs == {"a": 1}
    saved = cfg.save(tmp_path / "train_config.json")
    args = parser.parse_args(["train", "branch", "--config", str(saved), "--lr", "0.5"])
    again = config_from_args("branch", args)
    assert again == cfg.replace(lr=0.5)
    args = parser.parse_args(["train", "trunk", "--multires", "v3", "--epochs", "2.5", "--sync-bn"])
    trunk = config_from_args("trunk", args)
    assert isinstance(trunk, TrunkConfig) and trunk.multires == "v3" and math.isclose(trunk.epochs, 2.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "trunk", "--resize", "torch:bilinear"])


def test_cli_help_documents_every_option(capsys):
    parser = argparse.ArgumentParser(prog="btnet")
    register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "branch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--distill-weight", "the weight of the distillation terms", "--sync-bn, --no-sync-bn",
                   "example: btnet train branch", "(required)"):
        assert phrase in text
    assert np.all([f"--{n}" in text for n in ("resolution", "trunk-weights", "update-head-stats")])
