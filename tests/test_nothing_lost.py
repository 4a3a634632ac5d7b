"""Nothing a user saved is lost: whole-folder saves that survive kills, checksummed training
checkpoints, run folders that cannot overlap their inputs, and ``btnet pack`` that does not
replace existing files unasked.

Kills are real: a forked child process runs the save with one step replaced by ``os._exit``,
so no ``except``/``finally`` of the save runs, exactly as after SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import btnet_adapters  # noqa: F401 - registers btnet_* with timm
from btnet_adapters import _atomic, cli, hub
from btnet_adapters.data import ImageFolderSource, RecordIOSource, pack_recordio, write_synthetic_folder
from btnet_adapters.data.pack import main as pack_main
from btnet_adapters.errors import BTNetError, CorruptFileError, OutputExistsError, OverlappingPathsError
from btnet_adapters.hub import ArtifactError, ArtifactExistsError, from_pretrained, save_adapter, save_pretrained
from btnet_adapters.train import BranchConfig, TrunkConfig, train_branch, train_trunk
from btnet_adapters.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from btnet_adapters.train.cli import main as train_main

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:backbone 'test_resnet' has no btnet_")]

MFN = dict(embed_dim=128, backbone_kwargs=dict(num_features=128, scale=1))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".btnet-" in p.name)


def perturbed(seed: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("btnet_mobilefacenet", resolutions=[7, 14], **MFN)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.05 * torch.rand(t.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    return perturbed(1), perturbed(2)


@pytest.fixture(scope="module")
def versions(models, tmp_path_factory) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """What the folder holds after saving the old and after saving the new model (+ a user file)."""
    out = []
    for model in models:
        folder = save_pretrained(model, tmp_path_factory.mktemp("ref") / "m")
        (folder / "notes.txt").write_text("mine")
        out.append(snapshot(folder))
    assert out[0] != out[1]
    return out[0], out[1]


@pytest.fixture()
def old_folder(models, tmp_path) -> Path:
    folder = save_pretrained(models[0], tmp_path / "m")
    (folder / "notes.txt").write_text("mine")
    return folder


def killed_in_child(action: Callable[[], None], patch: Callable[[pytest.MonkeyPatch], None]) -> None:
    """Run ``action`` in a forked child with ``patch`` applied; the child must die by ``os._exit(9)``."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            mp = pytest.MonkeyPatch()
            patch(mp)
            action()
        except BaseException:  # noqa: BLE001 - report through the exit status
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 9, "the child was meant to be killed inside the save"


def die_on_call(mp: pytest.MonkeyPatch, module: object, name: str, n: int,
                when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Replace ``module.name`` so that its ``n``-th call (counting calls where ``when`` holds) kills."""
    real, calls = getattr(module, name), [0]

    def fake(*args, **kwargs):
        if when(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                os._exit(9)
        return real(*args, **kwargs)

    mp.setattr(module, name, fake)


# ---------------------------------------------------------------------- 1. whole-folder saves
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to kill a save mid-way")
@pytest.mark.parametrize("kill_at", ["write", "rename1", "rename2", "delete_backup"])
def test_killed_overwrite_leaves_old_or_new_never_a_mix(models, versions, old_folder, kill_at):
    """A save killed at any point leaves the old or the new folder, bit-identical; the next save
    into the same parent cleans up (restoring the old folder if the kill fell between the two
    renames) and nothing is left behind."""
    old, new = versions
    parent = old_folder.parent

    def patch(mp: pytest.MonkeyPatch) -> None:
        if kill_at == "write":
            die_on_call(mp, hub, "_write_json", 1)
        elif kill_at.startswith("rename"):
            die_on_call(mp, os, "rename", int(kill_at[-1]))
        else:
            die_on_call(mp, shutil, "rmtree", 1, when=lambda path, *a, **k: ".btnet-backup-" in str(path))

    killed_in_child(lambda: save_pretrained(models[1], old_folder, overwrite=True), patch)
    assert leftovers(parent), "a killed save leaves its staging or backup folder"
    if kill_at == "rename2":  # between the renames: only the backup holds the (complete) old folder
        assert not old_folder.exists()
        (backup,) = [p for p in parent.iterdir() if ".btnet-backup-" in p.name]
        assert snapshot(backup) == old
        with pytest.raises(ArtifactError, match="killed while swapping.*intact at"):
            from_pretrained(old_folder)  # a load names the intact backup instead of "not found"
        assert _atomic.recover_leftovers(parent) == [old_folder]
    state = snapshot(old_folder)
    assert state == (new if kill_at == "delete_backup" else old)
    from_pretrained(old_folder)  # loads, checksums verified
    # The next save into the parent cleans up; a refused one changes nothing.
    with pytest.raises(ArtifactExistsError):
        save_pretrained(models[1], old_folder)
    assert leftovers(parent) == [] and snapshot(old_folder) == state
    save_pretrained(models[1], old_folder, overwrite=True)
    assert snapshot(old_folder) == new and leftovers(parent) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to kill a save mid-way")
def test_next_save_restores_the_backup_of_a_swap_killed_between_renames(models, versions, old_folder, tmp_path):
    killed_in_child(lambda: save_pretrained(models[1], old_folder, overwrite=True),
                    lambda mp: die_on_call(mp, os, "rename", 2))
    assert not old_folder.exists()
    save_adapter(models[0], tmp_path / "other", 7)  # any save into the same parent folder
    assert snapshot(old_folder) == versions[0] and leftovers(tmp_path) == []


def test_failed_swap_is_rolled_back(models, versions, old_folder, monkeypatch):
    real = os.rename
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # staging -> target
            raise OSError("disk trouble")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OSError, match="disk trouble"):
        save_pretrained(models[1], old_folder, overwrite=True)
    monkeypatch.undo()
    (to_backup, swap, back) = [(Path(a).name, Path(b).name) for a, b in calls]
    assert ".btnet-backup-" in to_backup[1] and ".btnet-staging-" in swap[0] and back == (to_backup[1], "m")
    assert snapshot(old_folder) == versions[0] and leftovers(old_folder.parent) == []


def test_overwrite_keeps_user_files_symlinks_and_empty_folders(models, old_folder):
    (old_folder / "empty").mkdir()
    (old_folder / "sub").mkdir()
    (old_folder / "sub" / "data.bin").write_bytes(b"\0" * 10)
    (old_folder / "link").symlink_to("notes.txt")
    inode = (old_folder / "sub" / "data.bin").stat().st_ino
    save_pretrained(models[1], old_folder, resolutions=[14], overwrite=True)
    assert (old_folder / "empty").is_dir() and (old_folder / "notes.txt").read_text() == "mine"
    assert (old_folder / "link").is_symlink() and os.readlink(old_folder / "link") == "notes.txt"
    assert (old_folder / "sub" / "data.bin").stat().st_ino == inode  # hard-linked, not copied
    assert not (old_folder / "adapters" / "r7").exists()  # a full save drops adapters of the old trunk
    assert from_pretrained(old_folder).branch_resolutions == (14,)


def test_adding_to_an_existing_folder_keeps_everything(models, old_folder, tmp_path):
    before = snapshot(old_folder)
    save_adapter(models[0], old_folder, 14)  # no clash: adds two files, keeps the rest
    after = snapshot(old_folder)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["adapter_config.json", "adapter_model.safetensors"]
    with pytest.raises(ArtifactExistsError, match="overwrite=True"):
        save_adapter(models[1], old_folder, 14)
    assert snapshot(old_folder) == after and leftovers(tmp_path) == []
    # an adapters-only save replaces its own resolution and keeps the other adapters
    save_pretrained(models[0], old_folder, resolutions=[14], adapters_only=True, overwrite=True)
    assert (old_folder / "adapters" / "r7" / "adapter_model.safetensors").read_bytes() == \
        before["adapters/r7/adapter_model.safetensors"]


def test_stale_leftovers_are_cleaned_live_ones_kept(models, tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    live = os.getppid()
    names = {f".a.btnet-staging-{dead}-0123abcd": False, f".b.btnet-backup-{dead}-0123abcd": False,
             f".c.btnet-staging-{live}-0123abcd": True, f".m.btnet-staging-{os.getpid()}-0123abcd": False,
             ".d.not-ours": True}
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "big.bin").write_bytes(b"\0" * 1000)
    (tmp_path / "b").mkdir()  # the target of the dead backup exists: the swap had finished
    save_pretrained(models[0], tmp_path / "m")
    assert {n: (tmp_path / n).exists() for n in names} == names


def test_save_into_the_working_directory(models, old_folder, monkeypatch, versions):
    monkeypatch.chdir(old_folder)
    save_pretrained(models[1], ".", overwrite=True)
    assert Path(os.getcwd()) == old_folder.resolve() and Path("notes.txt").read_text() == "mine"
    assert snapshot(old_folder) == versions[1]


# ---------------------------------------------------------------------- 2. checkpoint checksums
def _checkpoints(folder: Path) -> list[Path]:
    for step in (3, 6):
        save_checkpoint(folder, step, {"w": torch.arange(6.0) * step, "b": torch.ones(2)}, {"note": "x"})
    return [p for _, p in list_checkpoints(folder)]


def test_flipped_bit_in_a_checkpoint_is_caught(tmp_path):
    earlier, latest = _checkpoints(tmp_path)
    assert load_checkpoint(latest)[1]["step"] == 6
    data = bytearray(latest.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's bytes
    latest.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="checksum") as info:
        load_checkpoint(latest)
    assert isinstance(info.value, (BTNetError, ValueError))
    assert str(latest) in str(info.value) and f"resume from the previous checkpoint {earlier.name}" in str(info.value)
    load_checkpoint(earlier)


def test_edited_metadata_and_truncation_are_caught(tmp_path):
    _, latest = _checkpoints(tmp_path)
    data = latest.read_bytes()
    edited = data.replace(b'\\"step\\": 6', b'\\"step\\": 9')
    assert edited != data and len(edited) == len(data)
    latest.write_bytes(edited)
    with pytest.raises(CorruptFileError, match="checksum"):
        load_checkpoint(latest)
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated or corrupted"):
        load_checkpoint(latest)


def test_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    path = tmp_path / "ckpt-000000003.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "btnet-train-checkpoint", "meta": '{"step": 3}'})
    with pytest.warns(UserWarning, match="no checksum"):
        tensors, meta = load_checkpoint(path)
    assert meta == {"step": 3} and torch.equal(tensors["w"], torch.ones(2))


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_synthetic_folder(tmp_path_factory.mktemp("faces"), num_identities=4, per_identity=4, size=32)


def _trunk_config(data: Path, out: Path, **changes) -> TrunkConfig:
    base = dict(data=str(data), out=str(out), model="test_resnet", model_kwargs={"input_size": 32, "embed_dim": 16},
                epochs=1.0, batch_size=8, lr=0.05, warmup_epochs=0.0, workers=0, log_every=1, progress=False,
                checkpoint_every=1)
    return TrunkConfig(**{**base, **changes})


def test_resume_from_a_corrupt_checkpoint_names_the_file(faces, tmp_path):
    cfg = _trunk_config(faces, tmp_path / "run", max_steps=2)
    train_trunk(cfg)
    latest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    data = bytearray(latest.read_bytes())
    data[-1] ^= 0x80
    latest.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="ckpt-000000001.safetensors") as info:
        train_trunk(cfg.replace(resume=True))
    assert f"delete {latest}" in str(info.value)
    latest.unlink()  # as the message says: the run resumes from the previous checkpoint
    assert train_trunk(cfg.replace(resume=True)).step == 2


# ---------------------------------------------------------------------- 3. run folders vs inputs
@pytest.fixture(scope="module")
def saved_trunk(faces, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trunk") / "t"
    train_trunk(_trunk_config(faces, out, max_steps=1))
    return out


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_branch_run_cannot_write_into_its_trunk(faces, saved_trunk, tmp_path, where):
    trunk = Path(shutil.copytree(saved_trunk, tmp_path / "x" / "t"))
    before = snapshot(trunk)
    out = {"same": trunk, "inside": trunk / "b8", "contains": trunk.parent}[where]
    cfg = BranchConfig(data=str(faces), out=str(out), trunk=str(trunk), resolution=8, max_steps=1, batch_size=8,
                       workers=0, progress=False)
    with pytest.raises(OverlappingPathsError) as info:
        train_branch(cfg)
    assert str(out) in str(info.value) and str(trunk) in str(info.value)
    assert snapshot(trunk) == before


def test_cli_refuses_overlap_with_exit_code_2(faces, saved_trunk, tmp_path, capsys):
    trunk = Path(shutil.copytree(saved_trunk, tmp_path / "t"))
    before = snapshot(trunk)
    code = train_main(["branch", "--trunk", str(trunk), "--out", str(trunk), "--data", str(faces),
                       "--resolution", "8", "--max-steps", "1", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "out=" in err and "trunk=" in err and str(trunk) in err
    assert snapshot(trunk) == before
    weights = trunk / "model.safetensors"  # a trunk run started from weights inside its out folder
    with pytest.raises(OverlappingPathsError, match="init_weights"):
        train_trunk(_trunk_config(faces, trunk, init_weights=str(weights), resume=True))
    link = tmp_path / "link"
    link.symlink_to(trunk)  # the same folder under another name
    with pytest.raises(OverlappingPathsError, match="is the same path as"):
        BranchConfig(data=str(faces), out=str(link), trunk=str(trunk), resolution=8).validate()
    BranchConfig(data=str(faces), out=str(tmp_path / "tt"), trunk=str(trunk), resolution=8).validate()  # a sibling


# ---------------------------------------------------------------------- 4. btnet pack
def test_pack_refuses_to_replace_unless_asked(faces, tmp_path, capsys):
    out = tmp_path / "rec"
    assert cli.main(["pack", str(faces), str(out)]) == 0
    assert "16 images, 4 identities" in capsys.readouterr().out
    before = snapshot(out)
    assert cli.main(["pack", str(faces), str(out), "--format", "png"]) == 2
    err = capsys.readouterr().err
    assert str(out / "train.rec") in err and "--overwrite" in err
    assert pack_main([str(faces), str(out)]) == 2  # python -m btnet_adapters.data.pack: the same
    assert str(out / "train.rec") in capsys.readouterr().err
    with pytest.raises(OutputExistsError, match="overwrite"):
        pack_recordio(ImageFolderSource(faces), out, progress=False)
    assert snapshot(out) == before
    (out / "train.rec").unlink()  # a lone .idx (or .classes.json) is still somebody's file
    with pytest.raises(OutputExistsError, match="train.idx"):
        pack_recordio(ImageFolderSource(faces), out, progress=False)
    assert pack_main([str(faces), str(out), "--overwrite", "--name", "train"]) == 0
    assert len(RecordIOSource(out, progress=False)) == 16
    assert pack_main([str(faces), str(out), "--name", "other"]) == 0  # another name is no clash
    assert sorted(p.name for p in out.iterdir()) == ["other.classes.json", "other.idx", "other.rec", "property",
                                                      "train.classes.json", "train.idx", "train.rec"]


def test_python_m_pack_still_works(faces, tmp_path):
    assert pack_main([str(faces), str(tmp_path / "r"), "--quality", "90"]) == 0
    before = snapshot(tmp_path / "r")
    again = subprocess.run([sys.executable, "-m", "btnet_adapters.data.pack", str(faces), str(tmp_path / "r")],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert snapshot(tmp_path / "r") == before and json.loads(before["train.classes.json"])
    assert "btnet_adapters.data.pack" in cli.COMMAND_MODULES
