"""ONNX export: one graph per resolution over one shared weight file, run without torch.

:func:`export_onnx` writes, for every resolution (the branches and the trunk at ``input_size``),
a graph ``btnet_r{r}.onnx`` (input ``N×3×r×r`` float32 normalised RGB, output ``N×D`` raw
embeddings, dynamic batch) whose weights live in **one** external-data file, ``btnet_weights.bin``,
that holds each distinct tensor once: the shared trunk layers every path runs are stored once, not
once per resolution (a MobileFaceNet with branches 7/14/28: 8.0 MB of distinct tensors, 15.8 MB as
four self-contained files). The graphs are exported without constant folding, so per-resolution
batch norms are not folded into the shared convolutions (onnxruntime fuses them when it loads a
session). ``manifest.json`` (format version 2) lists the graphs and the data file with their
checksums, the normalisation (in pixel units), routing defaults, resize spec and the
torch-vs-onnxruntime difference measured at export.

:class:`OnnxBTNet` reads such a folder, and the self-contained per-resolution files of format
version 1, with onnxruntime only: this module imports torch inside :func:`export_onnx` and
:class:`TorchBTNet` alone. :func:`standalone_onnx` writes one path as a single self-contained
file (for tools that take one ``.onnx`` file, e.g. an insightface model pack).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .errors import InputImageError, ResolutionError
from .hub import (
    DEFAULT_ROUTING,
    ArtifactError,
    check_format_version,
    _file_sha256,
    _inside,
    _library_version,
    _read_json,
    _verify_file,
    write_folder,
)

if TYPE_CHECKING:
    import onnx

    from .model import BTNet

__all__ = [
    "DATA_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "OnnxBTNet",
    "TorchBTNet",
    "export_onnx",
    "register",
    "standalone_onnx",
]

MANIFEST_NAME = "manifest.json"
#: The external-data file every graph of a format-2 folder reads its weights from.
DATA_NAME = "btnet_weights.bin"
#: ONNX folder format: 1 = one self-contained file per resolution; 2 = graphs over one data file.
FORMAT_VERSION = 2
_FORMAT = "btnet-onnx"
_LAYOUTS = {1: "self-contained", 2: "shared-external-data"}
_INPUT, _OUTPUT = "input", "embedding"
_ALIGN = 64  # byte alignment of each tensor in the data file
_NOISY = (  # messages of the (deprecated but working) TorchScript exporter
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
    r"Constant folding - Only steps=1",
)


def _trace(model: BTNet, resolution: int, opset: int) -> onnx.ModelProto:
    """The path of ``resolution`` as an ONNX graph with its weights inline (no folding)."""
    import onnx
    import torch

    module = model.path(resolution)
    device = next(model.parameters()).device
    probe = torch.zeros(2, 3, resolution, resolution, device=device)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        for message in _NOISY:
            warnings.filterwarnings("ignore", message=message)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # No constant folding: it would fold each path's batch norms into the convolutions they
        # follow, turning the shared trunk convolutions into different tensors per resolution.
        torch.onnx.export(
            module, (probe,), buffer, input_names=[_INPUT], output_names=[_OUTPUT],
            dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
            opset_version=opset, do_constant_folding=False, dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's bytes in ONNX's raw (external-data) layout: little-endian, packed."""
    from onnx import TensorProto, numpy_helper

    if tensor.data_type == TensorProto.STRING:
        raise ArtifactError(f"initializer {tensor.name} holds strings; it cannot be stored as external data")
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    array = numpy_helper.to_array(tensor)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


class _SharedData:
    """The data file being written: each distinct tensor (by content) once, aligned."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.size = 0
        self.tensors = 0
        self._offsets: dict[bytes, int] = {}

    def externalize(self, model: onnx.ModelProto) -> tuple[int, int]:
        """Point every initializer of ``model`` at its bytes in the data file (written if new);
        returns ``(initializers, their bytes)``."""
        from onnx import external_data_helper

        count = total = 0
        for tensor in model.graph.initializer:
            raw = _raw_bytes(tensor)
            if not raw:
                continue
            key = tensor.data_type.to_bytes(4, "little") + hashlib.sha256(raw).digest()
            offset = self._offsets.get(key)
            if offset is None:
                pad = -self.size % _ALIGN
                self.handle.write(b"\0" * pad)
                offset = self._offsets[key] = self.size + pad
                self.handle.write(raw)
                self.size = offset + len(raw)
                self.tensors += 1
            tensor.raw_data = raw  # set_external_data wants raw_data present
            external_data_helper.set_external_data(tensor, DATA_NAME, offset=offset, length=len(raw))
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                tensor.ClearField(field)
            count += 1
            total += len(raw)
        return count, total


def export_onnx(
    model: BTNet,
    out_dir: str | os.PathLike,
    *,
    resolutions: Sequence[int] | None = None,
    opset: int = 17,
    samples: dict[int, np.ndarray] | None = None,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export one ONNX graph per resolution over one shared weight file, and ``manifest.json``.

    Every graph is checked with onnxruntime against torch (max abs difference ≤ ``atol``) in a
    staging folder before ``out_dir`` is replaced (as a whole, see
    :func:`btnet_adapters.hub.write_folder`; with ``overwrite``, graphs of an earlier export that
    this one does not write are dropped, since they would point into the replaced data file).

    Args:
        model: the BTNet (any device; exported in eval mode, its modes are restored after).
        out_dir: target folder.
        resolutions: sides to export (default: every branch and the trunk's ``input_size``).
        opset: ONNX opset.
        samples: per resolution, normalised ``N×3×r×r`` float32 inputs for the check
            (default: 4 seeded random inputs).
        atol: largest accepted difference between torch and onnxruntime outputs.
        overwrite: replace existing files in ``out_dir``.

    Returns:
        The manifest.
    """
    sides = list(model.resolutions) if resolutions is None else sorted({int(r) for r in resolutions})
    unknown = [r for r in sides if r not in model.resolutions]
    if unknown:
        raise ResolutionError(f"cannot export {unknown}: the model takes sides {model.resolutions}")
    import onnx

    flags = {m: m.training for m in model.modules()}
    reference = TorchBTNet(model)  # puts the model in eval mode
    rng = np.random.default_rng(0)
    try:
        def write(folder: Path) -> list[str]:
            files: dict[str, Any] = {}
            with (folder / DATA_NAME).open("wb") as handle:
                data = _SharedData(handle)
                for r in sides:  # one graph with inline weights in memory at a time
                    graph = _trace(model, r, opset)
                    count, total = data.externalize(graph)
                    path = folder / f"btnet_r{r}.onnx"
                    onnx.save(graph, str(path))
                    files[str(r)] = {"path": path.name, "tensors": count, "tensor_bytes": total}
            for r in sides:
                path = folder / files[str(r)]["path"]
                x = samples[r] if samples and r in samples else rng.standard_normal((4, 3, r, r)).astype(np.float32)
                diff = float(np.abs(_OnnxSession(path).run(x) - reference.run(r, x)).max())
                if not diff <= atol:
                    raise ArtifactError(f"the ONNX model for {r}×{r} differs from torch by {diff:.3g} > atol={atol}")
                files[str(r)].update(sha256=_file_sha256(path), bytes=path.stat().st_size, max_abs_diff=diff)
            data_path = folder / DATA_NAME
            data_record = {"path": DATA_NAME, "sha256": _file_sha256(data_path), "bytes": data_path.stat().st_size,
                           "tensors": data.tensors}
            manifest = _manifest(model, files, data_record, opset)
            (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            return [MANIFEST_NAME, DATA_NAME, *(f["path"] for f in files.values())]

        def stale() -> list[Path]:
            target = Path(os.path.realpath(Path(out_dir).expanduser()))  # as write_folder resolves it
            mine = {f"btnet_r{r}.onnx" for r in sides}
            return [p for p in target.glob("btnet_r*.onnx") if p.name not in mine]

        write_folder(out_dir, write, overwrite=overwrite, stale=stale)
    finally:
        for module, flag in flags.items():
            module.training = flag
        sync = getattr(model, "_sync_paths", None)  # the fixed paths copy the modules' flags
        if sync is not None:
            sync()
    return _read_json(Path(out_dir) / MANIFEST_NAME, "ONNX manifest")


def _manifest(model: BTNet, files: dict[str, Any], data: dict[str, Any], opset: int) -> dict[str, Any]:
    from .hub import trunk_fingerprint

    cfg = model.pretrained_cfg
    return {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "layout": _LAYOUTS[FORMAT_VERSION],
        "library_version": _library_version(),
        "input_size": model.input_size,
        "embed_dim": model.embed_dim,
        "resolutions": sorted(int(r) for r in files),
        "files": files,
        "data": data,
        "total_bytes": data["bytes"] + sum(f["bytes"] for f in files.values()),
        "input": {"name": _INPUT, "layout": "NCHW", "channels": "RGB", "dtype": "float32",
                  "mean": [255.0 * float(v) for v in cfg["mean"]], "std": [255.0 * float(v) for v in cfg["std"]]},
        "output": {"name": _OUTPUT, "normalized": False},
        "routing": dict(DEFAULT_ROUTING),
        "resize": model.resize_spec.to_dict(),
        "opset": opset,
        "model_args": model.config(),
        "trunk_fingerprint": trunk_fingerprint(model),
    }


class TorchBTNet:
    """A BTNet (eval mode) behind the numpy interface of :class:`OnnxBTNet`."""

    def __init__(self, model: BTNet) -> None:
        self.model = model.eval()
        self.input_size = int(model.input_size)
        self.resolutions = tuple(int(r) for r in model.resolutions)
        self.embed_dim = int(model.embed_dim)
        self.mean = 255.0 * np.asarray(model.pretrained_cfg["mean"], dtype=np.float32)
        self.std = 255.0 * np.asarray(model.pretrained_cfg["std"], dtype=np.float32)

    def prepare(self, ctx_id: int = -1) -> None:
        """``ctx_id < 0``: CPU; otherwise CUDA device ``ctx_id`` when torch has it."""
        import torch

        cuda = ctx_id >= 0 and torch.cuda.is_available()
        self.model.to(torch.device(f"cuda:{ctx_id}" if cuda else "cpu"))

    def run(self, resolution: int, x: np.ndarray) -> np.ndarray:
        """Raw embeddings ``(N, D)`` of normalised ``N×3×r×r`` inputs of side ``resolution``."""
        import torch

        device = next(self.model.parameters()).device
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
            out = (self.model.forward_trunk(t) if resolution == self.input_size
                   else self.model.forward_branch(t, resolution))
        return out.float().cpu().numpy()


class _OnnxSession:
    """One onnxruntime session with the exported input/output names."""

    def __init__(self, path: Path, providers: Sequence[Any] | None = None) -> None:
        import onnxruntime

        self.path = path
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ArtifactError(f"onnxruntime cannot load {path}: {type(err).__name__}: {err}") from err

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([_OUTPUT], {_INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _check_format(manifest: dict[str, Any], where: Path) -> int:
    if manifest.get("format") != _FORMAT:
        raise ArtifactError(f"{where} is not a BTNet ONNX manifest (format {manifest.get('format')!r})")
    return check_format_version(manifest, f"ONNX manifest {where}", FORMAT_VERSION)


def _check_external_data(path: Path, data: dict[str, Any] | None, what: str) -> None:
    """The graph reads external data only from the recorded data file, and only inside it."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # noqa: BLE001 - protobuf decode errors are untyped
        raise ArtifactError(f"{what} ({path}) is not a readable ONNX file: {type(err).__name__}: {err}") from err
    tensors = list(graph.initializer) + [
        a.t for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        if data is None or entries.get("location") != data["path"]:
            raise ArtifactError(
                f"{what} ({path}) reads tensor {tensor.name} from {entries.get('location')!r}; "
                + ("this folder format holds self-contained files" if data is None
                   else f"the manifest's only data file is {data['path']!r}")
            )
        try:
            end = int(entries.get("offset", 0)) + int(entries["length"])
        except (KeyError, ValueError) as err:
            raise ArtifactError(f"{what} ({path}): tensor {tensor.name} has no valid offset/length") from err
        if end > int(data.get("bytes", 0)):
            raise ArtifactError(f"{what} ({path}): tensor {tensor.name} ends at byte {end}, past the data file")


class OnnxBTNet:
    """The exported resolutions of a BTNet, run with onnxruntime (no torch needed).

    Reads the folders of :func:`export_onnx` (format 2: graphs over one shared data file) and of
    earlier versions (format 1: one self-contained file per resolution). Every file is checked
    against its recorded checksum before a session is made, and graphs may read external data
    only from the recorded data file.

    Args:
        onnx_dir: folder written by :func:`export_onnx`.
        providers: onnxruntime execution providers (default: CPU).

    Attributes:
        sessions: ``{resolution: onnxruntime.InferenceSession}``, one per path.
        files: ``{resolution: Path}`` of each path's graph.
    """

    def __init__(self, onnx_dir: str | os.PathLike, providers: Sequence[Any] | None = None) -> None:
        self.root = Path(onnx_dir).expanduser()
        manifest = _read_json(self.root / MANIFEST_NAME, "ONNX manifest")
        self.format_version = _check_format(manifest, self.root / MANIFEST_NAME)
        self.manifest = manifest
        self.input_size = int(manifest["input_size"])
        self.embed_dim = int(manifest["embed_dim"])
        self.mean = np.asarray(manifest["input"]["mean"], dtype=np.float32)
        self.std = np.asarray(manifest["input"]["std"], dtype=np.float32)
        self.input_name = str(manifest.get("input", {}).get("name", _INPUT))
        self.output_name = str(manifest.get("output", {}).get("name", _OUTPUT))
        data = manifest.get("data") if self.format_version >= 2 else None
        if self.format_version >= 2:
            if not isinstance(data, dict) or "path" not in data:
                raise ArtifactError(f"ONNX manifest {self.root / MANIFEST_NAME} (format 2) names no data file")
            _verify_file(_inside(self.root, data["path"], "ONNX data file"), data, "ONNX weight data file")
        self.files: dict[int, Path] = {}
        self._runners: dict[int, _OnnxSession] = {}
        for key, record in manifest["files"].items():
            path = _inside(self.root, record["path"], "ONNX file")
            what = f"ONNX model for resolution {key}"
            _verify_file(path, record, what)
            _check_external_data(path, data, what)
            self.files[int(key)] = path
        if self.input_size not in self.files:
            raise ArtifactError(f"{self.root} has no trunk model ({self.input_size}×{self.input_size}); it holds {sorted(self.files)}")
        for r, path in self.files.items():
            self._runners[r] = _OnnxSession(path, providers)
        self.resolutions = tuple(sorted(self.files))

    @property
    def sessions(self) -> dict[int, Any]:
        """``{resolution: onnxruntime.InferenceSession}``."""
        return {r: runner.session for r, runner in sorted(self._runners.items())}

    def prepare(self, ctx_id: int = -1) -> None:
        """``ctx_id < 0``: CPU; otherwise CUDA device ``ctx_id`` when onnxruntime has it."""
        import onnxruntime

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        providers: list[Any] = (
            [("CUDAExecutionProvider", {"device_id": ctx_id}), "CPUExecutionProvider"] if ctx_id >= 0 and cuda
            else ["CPUExecutionProvider"]
        )
        for runner in self._runners.values():
            runner.session.set_providers(providers)

    def run(self, resolution: int, x: np.ndarray) -> np.ndarray:
        """Raw embeddings ``(N, D)`` of normalised ``N×3×r×r`` inputs of side ``resolution``."""
        if resolution not in self._runners:
            raise ResolutionError(f"no ONNX model for {resolution}×{resolution}; exported: {self.resolutions}")
        if x.ndim != 4 or x.shape[1:] != (3, resolution, resolution):
            raise InputImageError(f"expected N×3×{resolution}×{resolution} input, got {x.shape}")
        return self._runners[resolution].run(x)


def standalone_onnx(onnx_dir: str | os.PathLike, resolution: int, out_path: str | os.PathLike, *,
                    overwrite: bool = False) -> Path:
    """Write one path of an exported folder as a single self-contained ONNX file.

    The graphs of a format-2 folder read their weights from the folder's data file; a tool that
    copies one ``.onnx`` file elsewhere (e.g. into an insightface model pack next to its
    detector) needs the weights inline. The folder is verified first (checksums), and the file is
    written only after onnxruntime loaded it.

    Returns:
        ``out_path``.
    """
    import onnx

    from .errors import OutputExistsError

    runner = OnnxBTNet(onnx_dir)
    if int(resolution) not in runner.files:
        raise ResolutionError(f"no ONNX model for {resolution}×{resolution}; exported: {runner.resolutions}")
    out = Path(out_path).expanduser()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True to replace it")
    graph = onnx.load(str(runner.files[int(resolution)]))  # pulls the external data inline
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        onnx.save(graph, str(tmp))
        _OnnxSession(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def register(subparsers: Any) -> None:
    """Add ``btnet export`` to the ``btnet`` command."""
    from ._parse import int_list

    p = subparsers.add_parser(
        "export", help="export a saved BTNet to ONNX: one graph per resolution over one shared weight file")
    p.add_argument("src", help="folder written by save_pretrained, or a Hub repo id")
    p.add_argument("out_dir", help=f"folder for btnet_r{{r}}.onnx graphs, {DATA_NAME} and {MANIFEST_NAME}")
    p.add_argument("--resolutions", type=int_list, default=None, help="sides to export, e.g. 14,112 (default: all)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--overwrite", action="store_true", help="replace existing files in out_dir")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: Any) -> int:
    from .hub import from_pretrained

    model = from_pretrained(args.src)
    manifest = export_onnx(model, args.out_dir, resolutions=args.resolutions, opset=args.opset, overwrite=args.overwrite)
    print("| resolution | file | bytes | weights read (shared) | max abs diff vs torch |\n|---|---|---:|---:|---|")
    for r in manifest["resolutions"]:
        f = manifest["files"][str(r)]
        print(f"| {r} | {f['path']} | {f['bytes']:,} | {f['tensor_bytes']:,} | {f['max_abs_diff']:.2e} |")
    data = manifest["data"]
    print(f"| all | {data['path']} | {data['bytes']:,} | {data['tensors']} distinct tensors | |")
    print(f"total: {manifest['total_bytes']:,} bytes")
    return 0
