"""Serving: one model instance, many threads, any mix of resolutions; compile/export per path;
the input contract of ``embed``/``forward``; all-or-nothing branch loads; old folders load."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from btnet_adapters import BTNet
from btnet_adapters.errors import ConfigError, InputImageError
from btnet_adapters.hub import ArtifactError, load_adapter, save_adapter
from btnet_adapters.surgery import StrideFreeConv2d

from .test_model import perturbed_resnet18

pytestmark = pytest.mark.usefixtures("one_thread")
LEGACY = Path(__file__).parent / "data" / "legacy_main_3a5503d"


@pytest.fixture(scope="module")
def model() -> BTNet:
    return perturbed_resnet18(32)


def _inputs(model: BTNet, n: int = 2) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {r: torch.randn(n, 3, r, r, generator=gen) for r in model.resolutions}


def _snapshot(model: BTNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- threads
def test_threads_with_mixed_resolutions_give_the_serial_results_bit_for_bit(model):
    inputs = _inputs(model)
    before = _snapshot(model)
    with torch.no_grad():
        serial = {r: model(x) for r, x in inputs.items()}
    order = [r for _ in range(6) for r in model.resolutions]
    barrier = threading.Barrier(12)

    def worker(offset: int) -> list[bool]:
        barrier.wait()
        same = []
        with torch.no_grad():
            for i in range(len(order)):
                r = order[(i + offset) % len(order)]
                same.append(torch.equal(model(inputs[r]), serial[r]))
        return same

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(worker, range(12)))
    assert all(all(r) for r in results) and sum(map(len, results)) == 12 * len(order)
    with torch.no_grad():  # intact afterwards: the same serial results, the same tensors, no views
        for r, x in inputs.items():
            assert torch.equal(model(x), serial[r])
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, StrideFreeConv2d) for m in model.modules())


def test_asyncio_tasks_in_a_thread_pool_and_embed_give_the_serial_results(model):
    gen = np.random.default_rng(0)
    faces = [gen.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (6, 7, 12, 14, 20, 28, 40, 112)]
    serial = [model.embed([f])[0] for f in faces]  # one image per call, as the tasks do (batching changes the last bits)

    async def serve() -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(8) as pool:
            jobs = [loop.run_in_executor(pool, model.embed, [faces[i % len(faces)]]) for i in range(64)]
            return await asyncio.gather(*jobs)

    out = asyncio.run(serve())
    assert all(torch.equal(e[0], serial[i % len(faces)]) for i, e in enumerate(out))


def test_forward_with_implant_from_threads_matches_serial(model):
    x7, x112 = torch.randn(2, 3, 7, 7), torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        want = {7: model.forward_with_implant(x7, 7), 112: model.forward_with_implant(x112, 7)}

    def worker(i: int) -> bool:
        x = x7 if i % 2 else x112
        with torch.no_grad():
            emb, z = model.forward_with_implant(x, 7)
        ref = want[7 if i % 2 else 112]
        return torch.equal(emb, ref[0]) and torch.equal(z, ref[1])

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(worker, range(32)))


def test_a_model_in_training_mode_is_restored_after_embed():
    net = BTNet.from_timm("resnet18", remove=["maxpool"], resolutions=(14,), embed_dim=16).train()
    net.embed([np.zeros((14, 14, 3), np.uint8)])
    assert all(m.training for m in net.modules())
    assert all(twin.training for path in net._paths[14] for twin, _ in path._copies)
    net.eval()
    assert not any(twin.training for path in net._paths[14] for twin, _ in path._copies)


# --------------------------------------------------------------------------- memory, compile, export
def test_paths_share_the_models_tensors(model):
    def storages(module: torch.nn.Module) -> dict[int, int]:
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*module.parameters(), *module.buffers()]}

    own = storages(model)
    for r in model.branch_resolutions:
        assert set(storages(model.path(r))) <= set(own)  # a path holds no tensor of its own
    trunk = sum(storages(model.trunk).values()) + sum(storages(model.head).values())
    adapters = sum(t.numel() * t.element_size() for r in model.branch_resolutions
                   for t in model.branch_state_dict(r).values())
    assert sum(own.values()) <= 1.05 * (trunk + adapters)


def test_compiled_paths_do_not_recompile_when_other_paths_run_in_between(model):
    compiled = []

    def counting(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        compiled.append(gm)
        return gm.forward

    torch._dynamo.reset()
    inputs = _inputs(model, n=1)
    fns = {r: torch.compile(model.path(r), backend=counting) for r in model.resolutions}
    with torch.no_grad():
        want = {r: model(x) for r, x in inputs.items()}
        for r, x in inputs.items():  # first call of each path compiles it
            torch.testing.assert_close(fns[r](x), want[r], rtol=1e-5, atol=1e-5)
        first = len(compiled)
        for _ in range(3):
            for r, x in inputs.items():
                fns[r](x)
                model(inputs[7])  # an eager call of another path in between
        whole = torch.compile(model, backend=counting)
        for _ in range(2):  # the whole model: one graph per side, then no more
            for x in inputs.values():
                whole(x)
        warm = len(compiled)
        for _ in range(2):
            for x in inputs.values():
                whole(x)
    torch._dynamo.reset()
    assert first == len(model.resolutions) and len(compiled) == warm


def test_each_path_exports(model):
    for r in (7, 28, 112):
        x = torch.randn(2, 3, r, r)
        program = torch.export.export(model.path(r), (x,))
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- input contract
def test_one_image_not_in_a_list_is_one_image(model):
    face = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    want = model.embed([face])
    assert want.shape == (1, 32)
    assert torch.equal(model.embed(face), want)
    chw = torch.from_numpy(face).permute(2, 0, 1)
    assert torch.equal(model.embed(chw), want)
    assert torch.equal(model.embed(Image.fromarray(face)), want)
    assert torch.equal(model.embed(chw.float() / 255), want)
    torch.testing.assert_close(model.embed(np.stack([face, face])), torch.cat([want, want]))
    assert model.embed(face[..., 0]).shape == (1, 32)  # H×W grey


@pytest.mark.parametrize("bad, match", [
    (lambda f: [torch.from_numpy(f).permute(2, 0, 1).float()], r"\[0, 1\].*uint8.*x / 255"),
    (lambda f: torch.from_numpy(f).float(), "H×W×C.*permute"),
    (lambda f: np.ascontiguousarray(f.transpose(2, 0, 1)[:, :, :16]), "C×H×W.*transpose"),
    (lambda f: [f.astype(np.float32)], "uint8"),
    (lambda f: [torch.from_numpy(f).permute(2, 0, 1).double() / 127.5 - 1], r"\[0, 1\]"),
    (lambda f: None, "None"),
    (lambda f: "face.jpg", "PIL.Image.open"),
    (lambda f: {"a": f}, "dict"),
    (lambda f: {1, 2}, "set"),
    (lambda f: 3.0, "float"),
    (lambda f: f[None, None], "5-d|4-d|shape"),
    (lambda f: [torch.zeros(3, 0, 4)], "empty"),
    (lambda f: [torch.full((3, 8, 8), float("nan"))], "NaN"),
])
def test_embed_refuses_ambiguous_or_wrong_inputs(model, bad, match):
    face = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    with pytest.raises(InputImageError, match=match):
        model.embed(bad(face))


@pytest.mark.parametrize("batch_size", [0, -1, None, 1.5, True, "8"])
def test_embed_refuses_bad_batch_sizes(model, batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        model.embed([np.zeros((9, 9, 3), np.uint8)], batch_size=batch_size)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(1, 3, 14, 14, dtype=torch.uint8), "uint8.*embed"),
    (torch.zeros(1, 3, 14, 14, dtype=torch.float64), "float64.*x.to"),
    (torch.zeros(1, 3, 14, 14, dtype=torch.int64), "int64"),
    (np.zeros((1, 3, 14, 14), np.float32), "ndarray"),
    (None, "NoneType"),
])
def test_forward_refuses_wrong_dtypes_and_types(model, bad, match):
    with pytest.raises(InputImageError, match=match):
        model(bad)


# --------------------------------------------------------------------------- all-or-nothing loads
def test_a_failed_branch_load_leaves_the_branch_bit_identical(model):
    net = copy.deepcopy(model)
    state = net.branch_state_dict(14)
    before = {k: v.clone() for k, v in state.items()}
    x = torch.randn(1, 3, 14, 14)
    with torch.no_grad():
        want = net(x)
    names = sorted(state)
    bad_shape = {**{k: v + 1 for k, v in state.items()}, names[-1]: torch.zeros(3)}
    bad_value = {**{k: v + 1 for k, v in state.items()}, names[-1]: torch.full_like(state[names[-1]], float("nan"))}
    bad_kind = {k: (v.long() if v.is_floating_point() else v) for k, v in state.items()}
    for bad in (bad_shape, bad_value, bad_kind, {k: v for k, v in state.items() if k != names[0]}):
        with pytest.raises(ConfigError, match="nothing was loaded|missing"):
            net.load_branch_state_dict(14, bad)
        after = net.branch_state_dict(14)
        assert all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(net(x), want)


def test_a_failed_adapter_load_leaves_the_model_bit_identical(model, tmp_path):
    net = copy.deepcopy(model)
    folder = save_adapter(net, tmp_path / "a", 14)
    adapter = folder
    tensors = load_file(adapter / "adapter_model.safetensors")
    names = sorted(tensors)
    tensors = {k: v + 1 for k, v in tensors.items()}
    tensors[names[-1]] = torch.zeros(2, 2)  # one tensor of the wrong shape, after 100+ good ones
    save_file(tensors, adapter / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.pop("file", None)  # checksum absent: the shape check must stop it
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    before = _snapshot(net)
    old_branch = net.branches["14"]
    with pytest.raises(ArtifactError, match="do not fit|nothing was loaded"):
        load_adapter(net, folder, 14)
    after = net.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert net.branches["14"] is old_branch


# --------------------------------------------------------------------------- old folders
def test_a_folder_saved_by_the_previous_main_loads_unchanged():
    """``tests/data/legacy_main_3a5503d`` was written by ``save_pretrained`` at commit 3a5503d
    (the swapping mechanism) with ``tests/data/make_legacy_main.py``; it must load and give the
    embeddings recorded then."""
    net = BTNet.from_pretrained(LEGACY, classifier=True)
    recorded = json.loads((LEGACY / "expected_embeddings.json").read_text())
    gen = torch.Generator().manual_seed(recorded["seed"])
    with torch.no_grad():
        for r in net.resolutions:
            x = torch.randn(2, 3, r, r, generator=gen)
            want = torch.tensor(recorded["embeddings"][str(r)])
            torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-5)
    assert net.num_classes == 10
