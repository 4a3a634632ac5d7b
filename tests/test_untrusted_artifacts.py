"""Serving-safe loading: a saved artifact cannot reach outside itself, and sizes read from files
are bounded before anything is allocated.

Every test edits a real folder written by ``save_pretrained`` (or a real ``.bin``) the way an
attacker or a corrupted download would, and checks the exact error type and that nothing was
loaded, built or allocated: ``torch.load``, timm's weight loader, the safetensors reader, the
model constructor or the unpickler are replaced by functions that fail the test if called.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

import btnet_adapters  # noqa: F401 - registers btnet_* with timm
from btnet_adapters import BTNet, _untrusted
from btnet_adapters import hub as hub_module
from btnet_adapters.checkpoints import read_state_dict
from btnet_adapters.evaluate import ProtocolFileError, parse_bin, read_bin, write_bin
from btnet_adapters.evaluate import safe_pickle
from btnet_adapters.evaluate.readers import bin as bin_reader
from btnet_adapters.hub import (
    ArtifactError,
    ArtifactLimitError,
    FingerprintMismatchError,
    UnsafeArtifactError,
    from_pretrained,
    load_adapter,
    save_pretrained,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread is fastest here

COMMIT = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
#: A ResNet with one basic block per stage and 16-128 channels: builds in well under a second.
TINY = dict(embed_dim=32, backbone_kwargs={"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16})


class Touched(AssertionError):
    """Raised by a function that must never be reached."""


def forbid(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    """Replace ``target.name`` by a function with the same signature that fails if called."""

    @functools.wraps(getattr(target, name))
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise Touched(f"{name} was called")

    monkeypatch.setattr(target, name, boom)


@pytest.fixture(scope="module")
def model() -> BTNet:
    torch.manual_seed(0)
    m = timm.create_model("btnet_resnet18", resolutions=[14], num_classes=5, margin="arcface", **TINY)
    with torch.no_grad():
        for t in m.state_dict().values():
            if t.is_floating_point():
                t.add_(0.01 * torch.rand(t.shape, generator=torch.Generator().manual_seed(t.numel())))
    return m.eval()


@pytest.fixture(scope="module")
def saved(model: BTNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pretrained(model, tmp_path_factory.mktemp("art") / "btnet")


@pytest.fixture()
def art(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "art"))


def edit_config(folder: Path, change: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def set_backbone_kwarg(folder: Path, key: str, value: Any) -> None:
    edit_config(folder, lambda c: c["model_args"]["backbone_kwargs"].__setitem__(key, value))


def set_model_arg(folder: Path, key: str, value: Any) -> None:
    edit_config(folder, lambda c: c["model_args"].__setitem__(key, value))


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """``folder`` laid out in ``cache`` as a Hub download leaves it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture()
def no_outside_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may be unpickled, downloaded or loaded by timm's own weight loader."""
    import timm.models._builder as builder
    import timm.models._factory as factory

    forbid(monkeypatch, torch, "load")
    forbid(monkeypatch, builder, "load_pretrained")
    forbid(monkeypatch, builder, "load_state_dict_from_url")
    forbid(monkeypatch, builder, "load_state_dict_from_hf")
    forbid(monkeypatch, factory, "load_checkpoint")


@pytest.fixture()
def never_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model (and so every tensor) must not be constructed."""
    forbid(monkeypatch, BTNet, "__init__")


def timm_local(folder: Path, pretrained: bool = True) -> torch.nn.Module:
    return timm.create_model(f"local-dir:{folder}", pretrained=pretrained)


# --------------------------------------------------------------------------- point 5: nothing outside
def test_checkpoint_path_in_backbone_kwargs_is_never_loaded(art: Path, tmp_path: Path,
                                                           no_outside_reads: None, never_built: None) -> None:
    outside = tmp_path / "outside.pth"
    outside.write_bytes(b"not read")  # a real file: only the refusal stops torch.load on it
    set_backbone_kwarg(art, "checkpoint_path", str(outside))
    for load in (lambda: from_pretrained(art), lambda: timm_local(art), lambda: timm_local(art, pretrained=False)):
        with pytest.raises(UnsafeArtifactError, match=r"backbone_kwargs\.checkpoint_path is refused: it loads a "
                                                      r"checkpoint file \(torch\.load\)"):
            load()


@pytest.mark.parametrize(("key", "value", "why"), [
    ("pretrained", True, "downloads or loads pretrained weights"),
    ("pretrained_cfg_overlay", {"file": "/etc/passwd"}, "names a weight source"),
    ("pretrained_cfg", {"url": "https://example.com/w.pth"}, "names a weight source"),
    ("cache_dir", "/tmp", "download cache"),
    ("file", "/etc/passwd", "names a weight file"),
    ("hf_hub_id", "evil/weights", "Hugging Face Hub repo"),
])
def test_loading_arguments_are_refused(art: Path, key: str, value: Any, why: str,
                                       no_outside_reads: None, never_built: None) -> None:
    set_backbone_kwarg(art, key, value)
    with pytest.raises(UnsafeArtifactError, match=rf"backbone_kwargs\.{key} is refused: it .*{why}"):
        from_pretrained(art)
    with pytest.raises(UnsafeArtifactError, match=rf"\.{key} is refused"):
        timm_local(art)


def test_top_level_loading_and_unknown_arguments(art: Path, no_outside_reads: None, never_built: None) -> None:
    set_model_arg(art, "checkpoint_path", "/etc/passwd")
    with pytest.raises(UnsafeArtifactError, match=r"model_args\.checkpoint_path is refused"):
        from_pretrained(art)
    edit_config(art, lambda c: c["model_args"].pop("checkpoint_path"))
    set_model_arg(art, "pretrained_strict", False)
    with pytest.raises(UnsafeArtifactError, match=r"model_args\.pretrained_strict is refused"):
        timm_local(art)
    edit_config(art, lambda c: c["model_args"].pop("pretrained_strict"))
    set_model_arg(art, "features_only", True)  # a timm builder option, not a BTNet argument
    with pytest.raises(UnsafeArtifactError, match=r"model_args\.features_only is refused"):
        timm_local(art, pretrained=False)
    edit_config(art, lambda c: c["model_args"].pop("features_only"))
    set_model_arg(art, "surprise", 1)
    with pytest.raises(UnsafeArtifactError, match=r"model_args\.surprise is not a BTNet argument; accepted: \[.*'backbone'"):
        from_pretrained(art)


def test_backbone_kwargs_must_be_architecture_arguments(art: Path, never_built: None) -> None:
    set_backbone_kwarg(art, "not_an_argument", 1)
    with pytest.raises(UnsafeArtifactError, match=r"backbone_kwargs\.not_an_argument is not an architecture argument "
                                                  r"of timm model 'resnet18'; accepted: \[.*'stem_width'"):
        from_pretrained(art)
    edit_config(art, lambda c: c["model_args"]["backbone_kwargs"].pop("not_an_argument"))
    for key, value, match in [
        ("stem_type", 3, "accepted: a string"),                       # default '' : a string
        ("avg_down", 1, "accepted: a boolean"),                       # default False: a boolean
        ("act_layer", {"module": "os"}, "accepted: JSON numbers"),    # never an object
        ("layers", [1, 1, 1, 10**9], "beyond the limit of"),          # bounded integers
        ("drop_rate", float("nan"), "finite numbers"),
    ]:
        set_backbone_kwarg(art, key, value)
        with pytest.raises((UnsafeArtifactError, ArtifactLimitError), match=match):
            from_pretrained(art)
        edit_config(art, lambda c, k=key: c["model_args"]["backbone_kwargs"].pop(k, None))
    set_backbone_kwarg(art, "layers", [1, 1, 1, 10**9])
    with pytest.raises(ArtifactLimitError):
        from_pretrained(art)


@pytest.mark.parametrize("backbone", ["hf-hub:evil/model", "local-dir:/etc", "resnet18.a1_in1k", "../resnet18"])
def test_backbone_must_be_a_plain_timm_name(art: Path, backbone: str, no_outside_reads: None,
                                            never_built: None) -> None:
    set_model_arg(art, "backbone", backbone)
    with pytest.raises(UnsafeArtifactError, match=r"model_args\.backbone .* refused"):
        from_pretrained(art)


def test_timm_routes_are_checked_before_building(art: Path, tmp_path: Path, offline: None,
                                                 no_outside_reads: None, never_built: None) -> None:
    set_backbone_kwarg(art, "pretrained", True)
    put_in_hub_cache(tmp_path / "hub", "org/evil", art)
    with pytest.raises(UnsafeArtifactError, match=r"backbone_kwargs\.pretrained is refused"):
        timm.create_model("hf-hub:org/evil", pretrained=True, cache_dir=tmp_path / "hub")
    with pytest.raises(UnsafeArtifactError, match=r"backbone_kwargs\.pretrained is refused"):
        from_pretrained("org/evil", cache_dir=tmp_path / "hub")


# --------------------------------------------------------------------------- timm routes: same checks
def test_timm_local_dir_uses_our_checked_loader(model: BTNet, saved: Path, no_outside_reads: None) -> None:
    """timm's own weight loader is forbidden here, yet the route works: the zoo delegates."""
    loaded = timm_local(saved).eval()
    x = torch.randn(2, 3, 14, 14, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.classifier is None


def test_timm_local_dir_flipped_byte_is_refused(art: Path, offline: None, tmp_path: Path) -> None:
    weights = art / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of tensor data: timm's loader alone would load it silently
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.safetensors .* is corrupted or was modified"):
        timm_local(art)
    put_in_hub_cache(tmp_path / "hub", "org/flipped", art)
    with pytest.raises(ArtifactError, match=r"model\.safetensors .* is corrupted or was modified"):
        timm.create_model("hf-hub:org/flipped", pretrained=True, cache_dir=tmp_path / "hub")
    timm_local(art, pretrained=False)  # building without weights reads no weight file


def test_timm_routes_check_the_trunk_fingerprint(art: Path, offline: None, tmp_path: Path) -> None:
    wrong = "sha256:" + "0" * 64
    edit_config(art, lambda c: c["btnet"].__setitem__("trunk_fingerprint", wrong))
    with pytest.raises(FingerprintMismatchError, match=wrong):
        timm_local(art)
    put_in_hub_cache(tmp_path / "hub", "org/other-trunk", art)
    with pytest.raises(FingerprintMismatchError, match=wrong):
        timm.create_model("hf-hub:org/other-trunk", pretrained=True, cache_dir=tmp_path / "hub")
    with pytest.raises(FingerprintMismatchError, match=wrong):
        from_pretrained(art)


# --------------------------------------------------------------------------- point 7: bounded sizes
@pytest.mark.parametrize(("key", "value", "match"), [
    ("embed_dim", 10**9, r"model_args\.embed_dim is 1,000,000,000, beyond the limit of 8,192"),
    ("input_size", 100_000, r"model_args\.input_size is 100,000, beyond the limit of 1,024"),
    ("num_classes", 10**12, r"model_args\.num_classes is 1,000,000,000,000, beyond the limit of 10,000,000"),
    ("resolutions", list(range(1, 100)), r"the number of .*resolutions is 99, beyond the limit of 16"),
    ("embed_dim", "512", r"model_args\.embed_dim must be an integer"),
])
def test_config_sizes_are_bounded(art: Path, key: str, value: Any, match: str, never_built: None) -> None:
    set_model_arg(art, key, value)
    with pytest.raises((ArtifactLimitError, UnsafeArtifactError), match=match) as err:
        from_pretrained(art)
    assert isinstance(err.value, ArtifactError)
    if not isinstance(value, str):
        assert isinstance(err.value, ArtifactLimitError)


def test_btnet_section_sizes_are_bounded(art: Path, never_built: None) -> None:
    edit_config(art, lambda c: c["btnet"].__setitem__("resolutions", [14, 10**7]))
    with pytest.raises(ArtifactLimitError, match=r"btnet\.resolutions entry is 10,000,000, beyond the limit of 1,024"):
        from_pretrained(art)


def test_huge_config_json_is_not_read(art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_untrusted, "MAX_JSON_BYTES", 64)
    forbid(monkeypatch, json, "loads")
    with pytest.raises(ArtifactLimitError, match=r"config\.json .* bytes, beyond the limit of 64 bytes"):
        from_pretrained(art)


def _rewrite_header(path: Path, change: Any) -> None:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def _drop_checksums(folder: Path) -> None:
    """Without recorded checksums only the header checks stand between the file and the reader."""
    edit_config(folder, lambda c: c["btnet"].__setitem__("files", {}))


def test_safetensors_header_claiming_a_huge_tensor(art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _drop_checksums(art)
    weights = art / "model.safetensors"

    def grow(header: dict) -> None:
        name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
        header[name]["shape"] = [1 << 20, 1 << 20]
        header[name]["data_offsets"] = [0, 4 << 40]

    _rewrite_header(weights, grow)
    forbid(monkeypatch, hub_module, "safe_open")  # no tensor may be mapped or read
    with pytest.raises(ArtifactLimitError, match=r"declares shape \[1048576, 1048576\] of F32 = 4,398,046,511,104 "
                                                 r"bytes, beyond the .* bytes of data the file holds"):
        from_pretrained(art)


def test_safetensors_header_length_beyond_the_limit(art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _drop_checksums(art)
    weights = art / "model.safetensors"
    weights.write_bytes((1 << 40).to_bytes(8, "little") + weights.read_bytes()[8:])
    forbid(monkeypatch, hub_module, "safe_open")
    with pytest.raises(ArtifactLimitError, match=r"declares a safetensors header of 1,099,511,627,776 bytes, beyond "
                                                 r"the limit of 16,777,216 bytes"):
        from_pretrained(art)


def test_safetensors_shape_that_does_not_fit_the_model_is_refused_unread(art: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor of a plausible size but another shape: refused from the header, before reading."""
    _drop_checksums(art)
    weights = art / "model.safetensors"
    data = weights.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 4)
    shape = header[name]["shape"]
    _rewrite_header(weights, lambda h: h[name].__setitem__("shape", [shape[1], shape[0], *shape[2:]]))
    forbid(monkeypatch, hub_module, "safe_open")
    with pytest.raises(ArtifactError, match=rf"{name}: file \[{shape[1]}, {shape[0]}"):
        from_pretrained(art)


def test_classifier_size_is_checked_before_it_is_allocated(art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid(monkeypatch, BTNet, "reset_classifier")
    edit_config(art, lambda c: c["btnet"]["classifier"].__setitem__("num_classes", 10**9))
    with pytest.raises(ArtifactLimitError, match=r"classifier\.num_classes is 1,000,000,000, beyond the limit"):
        from_pretrained(art, classifier=True)
    edit_config(art, lambda c: c["btnet"]["classifier"].__setitem__("num_classes", 5000))
    with pytest.raises(ArtifactError, match=r"classifier\.weight is \[5, 32\], the config records 5000 classes"):
        from_pretrained(art, classifier=True)


def test_adapter_resolution_is_bounded(model: BTNet, art: Path) -> None:
    path = art / "adapters" / "r14" / "adapter_config.json"
    config = json.loads(path.read_text())
    config["resolution"] = 10**8
    path.write_text(json.dumps(config))
    target = from_pretrained(art, resolutions=[])
    with pytest.raises(ArtifactLimitError, match=r"resolution is 100,000,000, beyond the limit of 1,024"):
        load_adapter(target, art / "adapters" / "r14")
    assert target.branch_resolutions == ()


def test_checkpoint_reader_checks_safetensors_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "backbone.safetensors"
    save_file({"w": torch.zeros(4, 4)}, str(path))
    _rewrite_header(path, lambda h: h["w"].__setitem__("shape", [1 << 30, 1 << 30]))
    import safetensors.torch

    forbid(monkeypatch, safetensors.torch, "load_file")
    with pytest.raises(ArtifactLimitError, match=r"tensor 'w' declares shape \[1073741824, 1073741824\]"):
        read_state_dict(path)


# --------------------------------------------------------------------------- .bin pickles
def _images(n: int) -> list[bytes]:
    return [bytes([i]) * 50 for i in range(n)]


@pytest.fixture()
def unpickler_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal must come from the scan, before the unpickler allocates anything."""
    forbid(monkeypatch, safe_pickle.RestrictedUnpickler, "load")


@pytest.mark.parametrize(("payload", "match"), [
    # BINBYTES8 declaring 1 TiB (the C unpickler allocates the declared size before reading)
    (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"tiny.", r"expected 1099511627776 bytes .* but only"),
    # BINUNICODE declaring 2 GiB
    (b"\x80\x03X" + struct.pack("<I", (1 << 31) - 1) + b"ab.", r"expected 2147483647 bytes"),
    # a frame longer than the data
    (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.", r"frame declares 1,099,511,627,776 bytes"),
    # a memo index of 2**32 - 1: a 32 GiB memo table
    (b"\x80\x02]r" + struct.pack("<I", (1 << 32) - 1) + b".", r"memo index of 4,294,967,295"),
])
def test_bin_declared_sizes_are_refused_before_unpickling(payload: bytes, match: str, unpickler_forbidden: None) -> None:
    with pytest.raises(safe_pickle.PickleLimitError, match=match) as err:
        parse_bin(payload)
    assert isinstance(err.value, ProtocolFileError)


def test_bin_reference_amplification_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # one 100 kB bytearray referenced 200 times: 20 MB of copies from a 100 kB file
    big = bytearray(b"x" * 100_000)
    data = pickle.dumps(([big] * 200, [True] * 100), protocol=4)
    assert len(data) < 110_000
    forbid(monkeypatch, bin_reader, "_image_bytes")
    with pytest.raises(safe_pickle.PickleLimitError, match=r"would take 20,000,000 bytes, more than the"):
        parse_bin(data)


def test_bin_reduce_amplification_is_refused() -> None:
    """``_codecs.encode`` called 100 times on one memoised 1 MB string: stopped by the budget."""
    text = b"a" * 1_000_000
    out = io.BytesIO()
    out.write(b"\x80\x02c_codecs\nencode\nq\x00")                      # memo 0: the function
    out.write(b"X" + struct.pack("<I", len(text)) + text + b"q\x01")  # memo 1: the text
    out.write(b"X\x06\x00\x00\x00latin1q\x02")                        # memo 2: the codec
    out.write(b"h\x01h\x02\x86q\x03")                                 # memo 3: (text, codec)
    out.write(b"](" + b"h\x00h\x03R" * 100 + b"e")                    # 100 calls
    out.write(b"]\x88\x86.")
    with pytest.raises(safe_pickle.PickleLimitError, match=r"a pickled byte string of 1,000,000 bytes exceeds the "
                                                           r"limit of"):
        parse_bin(out.getvalue())


def test_bin_bytearray_of_a_size_is_refused() -> None:
    """``bytearray(2**31 - 1)`` would allocate 2 GiB: the stand-in takes only bytes or text."""
    payload = b"\x80\x02c__builtin__\nbytearray\nJ\xff\xff\xff\x7f\x85R."
    with pytest.raises(ProtocolFileError, match=r"refused bytearray\(int\): only bytes or latin-1 text, never a size"):
        parse_bin(payload)


def test_bin_file_and_pair_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_bin(tmp_path / "small.bin", _images(6), [True, False, True])
    assert len(read_bin(path)) == 3
    monkeypatch.setattr(bin_reader, "MAX_BIN_PAIRS", 2)
    with pytest.raises(safe_pickle.PickleLimitError, match=r"6 images, beyond the limit of 4 \(2 pairs\)"):
        read_bin(path)
    monkeypatch.setattr(bin_reader, "MAX_BIN_BYTES", 100)
    forbid(monkeypatch, Path, "read_bytes")
    with pytest.raises(safe_pickle.PickleLimitError, match=r"bytes, beyond the limit of 100 bytes"):
        read_bin(path)


def test_real_bins_still_read(tmp_path: Path) -> None:
    """The scan and budget accept every format real files use (protocols 0-5, numpy issame)."""
    import numpy as np

    images = _images(4)
    for proto in range(6):
        for issame in ([True, False], np.array([True, False])):
            assert parse_bin(pickle.dumps((images, issame), protocol=proto)).images == tuple(images)
        arrays = [np.frombuffer(b, np.uint8) for b in images]
        assert parse_bin(pickle.dumps((arrays, [1, 0]), protocol=proto)).images == tuple(images)
        assert parse_bin(pickle.dumps(([bytearray(b) for b in images], [1, 0]), protocol=proto)).images == tuple(images)
