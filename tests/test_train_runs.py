"""End-to-end training runs on a tiny model and synthetic faces (CPU): trunk and branch runs,
the BTNet recipe's invariants, classifier fitting, input errors, the command line,
bit-identical resume after a kill, and 2 gloo processes against 1."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from btnet_adapters import hub
from btnet_adapters.data import (DatasetError, FaceDataset, ImageFolderSource, MissingDataError, PairedFaceDataset,
                                 pack_recordio, write_synthetic_folder)
from btnet_adapters.errors import ConfigError, ResolutionError
from btnet_adapters.train import (BranchConfig, TrunkConfig, fit_classifier, load_classifier, load_trunk_folder,
                                  train_branch, train_independent, train_trunk)
from btnet_adapters.train.branch import BranchTask, load_trunk, reset_branch
from btnet_adapters.train.checkpoint import latest_checkpoint
from btnet_adapters.train.classifier import class_means, embed_dataset
from btnet_adapters.train.cli import main as cli_main
from btnet_adapters.train.distributed import DistEnv
from btnet_adapters.train.engine import freeze_unused, run_loop
from btnet_adapters.train.monitor import read_log
from btnet_adapters.train.partial_fc import ShardedMarginHead
from btnet_adapters.train.trunk import build_model, resolution_sampler

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:backbone 'test_resnet' has no btnet_")]

REPO = Path(__file__).resolve().parents[1]
MODEL = "test_resnet"
MODEL_KW = {"input_size": 32, "embed_dim": 16}
R = 8  # a branch resolution of test_resnet at 32


def trunk_config(data: Path, out: Path, **changes) -> TrunkConfig:
    base = dict(data=str(data), out=str(out), model=MODEL, model_kwargs=MODEL_KW, epochs=2.0, batch_size=8,
                lr=0.05, warmup_epochs=0.5, workers=0, log_every=1, progress=False)
    return TrunkConfig(**{**base, **changes})


def branch_config(data: Path, trunk: Path | None, out: Path, **changes) -> BranchConfig:
    base = dict(data=str(data), out=str(out), trunk=str(trunk) if trunk else None, resolution=R, epochs=1.0,
                batch_size=8, lr=0.05, workers=0, log_every=1, progress=False)
    return BranchConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_folder(tmp_path_factory.mktemp("faces"), num_identities=6, per_identity=8, size=32)


@pytest.fixture(scope="module")
def trunk(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "trunk"
    result = train_trunk(trunk_config(data, out, epochs=3.0, margin_kwargs={"scale": 32.0}))
    assert not result.interrupted and result.step == result.total_steps == 18
    return out


# ---------------------------------------------------------------------- trunk runs
def test_trunk_run_writes_a_loadable_trunk(trunk):
    cfg = TrunkConfig.load(trunk / "train_config.json")
    assert cfg.margin_kwargs == {"scale": 32.0} and cfg.model == MODEL
    model, head, classes = load_trunk_folder(trunk)
    assert model.branch_resolutions == () and model.classifier is None
    assert type(head).__name__ == "CurricularFace" and head.num_classes == 6 and head.scale == 32.0
    assert float(head.t) != 0.0  # CurricularFace's running t moved during training
    assert classes == {f"id{k:04d}": k for k in range(6)}
    log = read_log(trunk / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 19))
    assert log[-1]["loss"] < log[0]["loss"]
    assert log[0]["lr"] < log[2]["lr"] and log[-1]["lr"] < log[3]["lr"]  # warm-up, then decay
    assert (trunk / "loss.png").is_file() and (trunk / "checkpoints" / "ckpt-000000018.safetensors").is_file()


def test_multires_baselines(data, tmp_path):
    assert resolution_sampler(TrunkConfig(multires="hr")) is None
    assert resolution_sampler(TrunkConfig(multires="v2")).probs == (0.3, 0.25, 0.2, 0.15, 0.1)
    assert resolution_sampler(TrunkConfig(multires="mm", resolution=14)).sizes == (14,)
    results = train_independent(trunk_config(data, tmp_path, max_steps=1), [8, 16])
    assert [r.out.name for r in results] == ["r8", "r16"]
    assert [TrunkConfig.load(r.out / "train_config.json").resolution for r in results] == [8, 16]
    assert all((r.out / "model.safetensors").is_file() for r in results)
    with pytest.raises(ResolutionError, match="exceed the trunk size"):  # v1 draws up to 112 px
        train_trunk(trunk_config(data, tmp_path / "v1", multires="v1", max_steps=1))


def test_trunk_options(data, trunk, tmp_path):
    mixed = train_trunk(trunk_config(data, tmp_path / "v2", multires="v2", max_steps=1, batch_size=4,
                                     model_kwargs={**MODEL_KW, "input_size": 112}))
    assert mixed.step == 1 and (mixed.out / "model.safetensors").is_file()
    bf16 = train_trunk(trunk_config(data, tmp_path / "bf16", amp="bf16", max_steps=2, sample_rate=0.5))
    assert all(math.isfinite(v) for k, v in bf16.last.items() if k.startswith("loss"))
    model, _, _ = load_trunk_folder(trunk)
    weights = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in model.trunk_state_dict().items()}, str(weights))
    started = train_trunk(trunk_config(data, tmp_path / "init", init_weights=str(weights), max_steps=1, lr=1e-6))
    again, _, _ = load_trunk_folder(started.out)
    assert torch.allclose(again.trunk.conv1[0].weight, model.trunk.conv1[0].weight, atol=1e-4)
    with pytest.raises(ConfigError, match="needs CUDA"):
        train_trunk(trunk_config(data, tmp_path / "fp16", amp="fp16", device="cpu"))


# ---------------------------------------------------------------------- branch runs
def _branch_parts(data: Path, trunk: Path, tmp_path: Path, **changes):
    cfg = branch_config(data, trunk, tmp_path / "b", **changes)
    model, classifier = load_trunk(cfg)
    reset_branch(model, R)
    head = ShardedMarginHead(classifier, DistEnv())
    source = ImageFolderSource(data)
    dataset = PairedFaceDataset(source, R, size=32, degradation=cfg.degradation)
    return cfg, model, head, dataset


def test_branch_training_moves_only_the_branch(data, trunk, tmp_path):
    cfg, model, head, dataset = _branch_parts(data, trunk, tmp_path, max_steps=4)
    trunk_before = {k: v.clone() for k, v in model.trunk_state_dict().items()}
    branch_before = {k: v.clone() for k, v in model.branch_state_dict(R).items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    (tmp_path / "b").mkdir()
    run_loop(BranchTask(model, R, head, DistEnv(), cfg), dataset, cfg, DistEnv(), tmp_path / "b")
    assert all(torch.equal(v, model.trunk_state_dict()[k]) for k, v in trunk_before.items())  # teacher in eval
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in head_before.items())  # classifier and t frozen
    after = model.branch_state_dict(R)
    moved = {k for k, v in branch_before.items() if not torch.equal(v, after[k])}
    assert {k for k in branch_before if k.endswith("running_mean")} <= moved  # r's norm statistics update
    assert "trunk.conv1.0.weight" in moved  # a specific (stem) convolution trains


def test_branch_can_let_the_head_statistics_move(data, trunk, tmp_path):
    cfg, model, head, dataset = _branch_parts(data, trunk, tmp_path, max_steps=2, update_head_stats=True)
    t = head.head.t.clone()
    (tmp_path / "b").mkdir()
    run_loop(BranchTask(model, R, head, DistEnv(), cfg), dataset, cfg, DistEnv(), tmp_path / "b")
    assert not torch.equal(t, head.head.t) and head.weight.requires_grad is False


@pytest.mark.parametrize("weights", [{}, {"embedding_weight": 0.0}, {"cls_weight": 0.0, "distill_weight": 2.0}])
def test_branch_loss_is_the_configured_mix(data, trunk, tmp_path, weights):
    cfg, model, head, dataset = _branch_parts(data, trunk, tmp_path, **weights)
    task = BranchTask(model, R, head, DistEnv(), cfg)
    teacher, student, labels = zip(*(dataset[(0, i)] for i in range(6)))
    parts = task.losses([torch.stack(teacher), torch.stack(student), torch.tensor(labels)], step=0)
    expected = cfg.cls_weight * parts["loss_cls"] + cfg.distill_weight * (
        cfg.feature_weight * parts["loss_feat"] + cfg.embedding_weight * parts["loss_emb"])
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["loss_feat"] > 0 and parts["loss_emb"] > 0


def test_parameters_off_the_trained_path_are_frozen(data, trunk, tmp_path):
    model = build_model("test_convnext", MODEL_KW)  # BTNet's head replaces convnext's own head norm
    unused = freeze_unused(model, lambda: model.forward_trunk(torch.randn(2, 3, 32, 32)).sum())
    assert unused == ["trunk.head.norm.weight", "trunk.head.norm.bias"]
    assert not model.trunk.head.norm.weight.requires_grad and all(p.grad is None for p in model.parameters())
    cfg, model, head, _ = _branch_parts(data, trunk, tmp_path)
    full = BranchTask(model, R, head, DistEnv(), cfg)
    cfg, model, head, _ = _branch_parts(data, trunk, tmp_path, cls_weight=0.0, embedding_weight=0.0)
    features_only = BranchTask(model, R, head, DistEnv(), cfg)  # nothing after the implant point trains
    assert 0 < len(features_only.named_parameters()) < len(full.named_parameters())


def test_branch_run_writes_a_hub_adapter(data, trunk, tmp_path):
    result = train_branch(branch_config(data, trunk, tmp_path / "b8", epochs=2.0))
    assert result.files["adapter"] == tmp_path / "b8" / "adapters" / "r8"
    cfg = json.loads((result.files["adapter"] / "adapter_config.json").read_text())
    assert cfg["resolution"] == R and cfg["format"] == "btnet-adapter"
    fresh, _, _ = load_trunk_folder(trunk)
    reset_branch(fresh, R)
    x = torch.randn(4, 3, R, R)
    with torch.no_grad():
        untrained = fresh.eval().forward_branch(x, R)
        assert hub.load_adapter(fresh, tmp_path / "b8", R) == R
        trained = fresh.eval().forward_branch(x, R)
    assert set(load_file(result.files["adapter"] / "adapter_model.safetensors")) == set(fresh.branch_state_dict(R))
    assert not torch.allclose(untrained, trained)
    assert "branch run finished at step 12/12" in result.summary() and "adapter" in result.summary()


def test_imported_trunk_gets_a_fitted_classifier(data, trunk, tmp_path):
    model, _, _ = load_trunk_folder(trunk)
    weights = tmp_path / "imported.safetensors"
    save_file({k: v.contiguous() for k, v in model.trunk.state_dict().items()}, str(weights))  # backbone keys
    cfg = branch_config(data, None, tmp_path / "b", model=MODEL, model_kwargs=MODEL_KW, trunk_weights=str(weights),
                        fit_epochs=2, margin="arcface", margin_kwargs={"margin": 0.3}, max_steps=2)
    result = train_branch(cfg)
    head = load_classifier(result.files["classifier"])
    assert type(head).__name__ == "ArcFace" and head.margin == 0.3 and head.num_classes == 6
    assert json.loads((tmp_path / "b" / "classes.json").read_text())["id0005"] == 5
    resumed = train_branch(cfg.replace(resume=True, max_steps=4))  # reuses the fitted classifier
    assert resumed.step == 4 and torch.equal(load_classifier(resumed.files["classifier"]).weight, head.weight)


def test_fit_classifier_starts_from_class_means_and_refines(data, trunk):
    model, _, _ = load_trunk_folder(trunk)
    dataset = FaceDataset(ImageFolderSource(data), size=32, flip=False)
    emb, labels = embed_dataset(model, dataset, batch_size=16, progress=False)
    assert emb.shape == (48, 16) and labels.tolist() == sorted(labels.tolist())
    means, counts = class_means(emb, labels, 6)
    start = fit_classifier(model, dataset, 6, margin="arcface", epochs=0, progress=False)
    assert torch.allclose(start.weight, means) and counts.tolist() == [8] * 6
    fitted = fit_classifier(model, dataset, 6, margin="arcface", epochs=20, lr=0.1, batch_size=16, progress=False)

    def loss(head):
        return torch.nn.functional.cross_entropy(head(emb, labels), labels).item()

    def accuracy(head):
        cos = torch.nn.functional.linear(torch.nn.functional.normalize(emb), torch.nn.functional.normalize(head.weight))
        return (cos.argmax(1) == labels).float().mean().item()

    assert loss(fitted) < loss(start) and accuracy(fitted) >= accuracy(start)


# ---------------------------------------------------------------------- wrong inputs stop early
def _no_compute(out: Path) -> None:
    assert not (out / "checkpoints").exists() and not (out / "log.jsonl").exists()


def test_wrong_inputs_stop_before_compute(data, trunk, tmp_path):
    cases = [
        (trunk_config(tmp_path / "nowhere", tmp_path / "a"), MissingDataError, "not found"),
        (branch_config(data, tmp_path / "no_trunk", tmp_path / "b"), ConfigError, "config.json is missing"),
        (branch_config(data, trunk, tmp_path / "c", resolution=5), ResolutionError, "available"),
        (branch_config(data, trunk, tmp_path / "d", classifier=str(tmp_path / "none.safetensors")), ConfigError,
         "classifier not found"),
    ]
    for cfg, error, message in cases:
        with pytest.raises(error, match=message):
            (train_trunk if isinstance(cfg, TrunkConfig) else train_branch)(cfg)
        _no_compute(Path(cfg.out))


def test_recordio_without_index_is_refused(data, tmp_path):
    summary = pack_recordio(ImageFolderSource(data), tmp_path / "rec", progress=False)
    summary.idx_path.unlink()
    with pytest.raises(MissingDataError, match=r"\.idx"):
        train_trunk(trunk_config(summary.rec_path, tmp_path / "out"))
    _no_compute(tmp_path / "out")


def test_labels_beyond_the_classifier_are_refused(trunk, tmp_path):
    more = write_synthetic_folder(tmp_path / "more", num_identities=8, per_identity=2, size=32)
    with pytest.raises(DatasetError, match="identities"):
        train_branch(branch_config(more, trunk, tmp_path / "out"))
    _no_compute(tmp_path / "out")


def test_trunk_weights_of_another_architecture_are_refused(data, trunk, tmp_path):
    model, _, _ = load_trunk_folder(trunk)
    weights = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.trunk_state_dict().items()}, str(weights))
    cfg = branch_config(data, None, tmp_path / "out", model="test_efficientnet", model_kwargs=MODEL_KW,
                        trunk_weights=str(weights))
    with pytest.raises(ConfigError, match="another architecture"):
        train_branch(cfg)
    _no_compute(tmp_path / "out")


def test_resume_checks_the_run_folder(data, tmp_path):
    cfg = trunk_config(data, tmp_path / "run", max_steps=2)
    train_trunk(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_trunk(cfg)
    with pytest.raises(ConfigError, match=r"another configuration.*lr: 0\.05 \(saved\) vs 0\.1 \(given\)"):
        train_trunk(cfg.replace(resume=True, lr=0.1))
    with pytest.raises(ConfigError, match="global batch of 8"):
        train_trunk(cfg.replace(resume=True, batch_size=4))
    assert train_trunk(cfg.replace(resume=True, max_steps=3)).step == 3


# ---------------------------------------------------------------------- command line
def test_cli_trains_and_reports(data, tmp_path, capsys):
    args = ["trunk", "--data", str(data), "--out", str(tmp_path / "t"), "--model", MODEL, "--model-kwargs",
            json.dumps(MODEL_KW), "--batch-size", "8", "--max-steps", "2", "--workers", "0", "--no-progress"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "trunk run finished at step 2/" in out and str(tmp_path / "t" / "model.safetensors") in out
    assert cli_main(args) == 2
    assert "already holds a run" in capsys.readouterr().err


# ---------------------------------------------------------------------- kill and resume
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "btnet_adapters.train.cli", *args]


def _wait_for_step(proc: subprocess.Popen, log: Path, step: int, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.is_file() and len(read_log(log)) >= step:
            return
        assert proc.poll() is None, "the training process ended before it could be killed"
        time.sleep(0.02)
    raise TimeoutError(f"no step {step} in {log}")


def _equal_files(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert set(x) == set(y)
    assert all(torch.equal(x[k], y[k]) for k in x), "resumed run differs from the uninterrupted one"


# A graceful stop checkpoints wherever it lands, so it is sent between two periodic checkpoints. A hard
# kill leaves only the periodic ones: it is sent once step 5 is logged, which the loop writes after the
# step-3 checkpoint is on disk, so the resumed run repeats steps 4-5 (and must not log them twice).
@pytest.mark.parametrize(("sig", "kill_at"), [(signal.SIGTERM, 3), (signal.SIGKILL, 5)])
def test_killed_run_resumes_bit_identically(data, trunk, tmp_path, sig, kill_at):
    if sig == signal.SIGTERM:  # a trunk run, stopped gracefully
        cfg = trunk_config(data, tmp_path / "ref", epochs=2.0, checkpoint_every=5)
        kind, final = "trunk", Path("model.safetensors")
    else:  # a branch run, killed hard: resumes from the last periodic checkpoint
        cfg = branch_config(data, trunk, tmp_path / "ref", epochs=2.0, checkpoint_every=3)
        kind, final = "branch", Path("adapters/r8/adapter_model.safetensors")
    (train_trunk if kind == "trunk" else train_branch)(cfg)
    saved = cfg.replace(out=str(tmp_path / "killed")).save(tmp_path / "cfg.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(_cli(kind, "--config", str(saved)), env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for_step(proc, tmp_path / "killed" / "log.jsonl", kill_at)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == (128 + sig if sig == signal.SIGTERM else -sig), output
    if sig == signal.SIGTERM:
        assert "continue with --resume" in output
    assert not (tmp_path / "killed" / final).exists()
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints") is not None, "nothing to resume from"
    done = subprocess.run(_cli(kind, "--config", str(saved), "--resume"), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stderr
    _equal_files(tmp_path / "ref" / final, tmp_path / "killed" / final)
    assert [r["step"] for r in read_log(tmp_path / "killed" / "log.jsonl")] == list(range(1, 13))


# ---------------------------------------------------------------------- two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, configs: list) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    for cfg in configs:
        (train_trunk if isinstance(cfg, TrunkConfig) else train_branch)(cfg)


def _close(a: Path, b: Path, atol: float = 1e-5) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert set(x) == set(y)
    worst = max((x[k].double() - y[k].double()).abs().max().item() for k in x)
    assert worst < atol, f"largest difference {worst}"


def test_two_gloo_processes_train_like_one(data, trunk, tmp_path):
    def configs(tag: str, batch: int) -> list:
        return [trunk_config(data, tmp_path / f"t{tag}", max_steps=3, batch_size=batch),
                branch_config(data, trunk, tmp_path / f"b{tag}", max_steps=3, batch_size=batch)]

    for cfg in configs("1", 8):
        (train_trunk if isinstance(cfg, TrunkConfig) else train_branch)(cfg)
    mp.spawn(_worker, args=(2, _free_port(), configs("2", 4)), nprocs=2, join=True)
    for name in ("model.safetensors", "classifier.safetensors"):
        _close(tmp_path / "t1" / name, tmp_path / "t2" / name)
    _close(tmp_path / "b1" / "adapters/r8/adapter_model.safetensors", tmp_path / "b2" / "adapters/r8/adapter_model.safetensors")
    # world-size independent checkpoints: the 2-process run continues in one process
    resumed = train_trunk(configs("2", 8)[0].replace(resume=True, max_steps=5))
    reference = train_trunk(configs("1", 8)[0].replace(resume=True, max_steps=5))
    assert resumed.step == reference.step == 5
    _close(tmp_path / "t1" / "model.safetensors", tmp_path / "t2" / "model.safetensors")


def test_torchrun_runs_the_cli_on_two_processes(data, tmp_path):
    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "btnet_adapters.train.cli", "trunk", "--data", str(data), "--out", str(out), "--model", MODEL,
           "--model-kwargs", json.dumps(MODEL_KW), "--batch-size", "4", "--max-steps", "2", "--workers", "0", "--log-every", "1",
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("trunk run finished at step 2/") == 1  # the summary comes from rank 0 only
    assert (out / "model.safetensors").is_file() and len(read_log(out / "log.jsonl")) == 2
