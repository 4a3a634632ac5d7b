"""ONNX export: one model per resolution, and an onnxruntime runner that needs no torch.

:func:`export_onnx` writes ``btnet_r{r}.onnx`` for every resolution (the branches and the trunk
at ``input_size``): input ``N×3×r×r`` float32, normalised RGB; output ``N×D`` raw embeddings;
dynamic batch. ``manifest.json`` lists the files with their checksums, the normalisation (in
pixel units), routing defaults, resize spec and the torch-vs-onnxruntime difference measured at
export. :class:`OnnxBTNet` reads such a folder with onnxruntime only: this module imports torch
inside :func:`export_onnx` and :class:`TorchBTNet` alone.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputImageError, ResolutionError
from .hub import (
    DEFAULT_ROUTING,
    ArtifactError,
    _check_version,
    _file_sha256,
    _inside,
    _library_version,
    _read_json,
    _verify_file,
    write_folder,
)

if TYPE_CHECKING:
    from .model import BTNet

__all__ = ["MANIFEST_NAME", "OnnxBTNet", "TorchBTNet", "export_onnx", "register"]

MANIFEST_NAME = "manifest.json"
_FORMAT = "btnet-onnx"
_INPUT, _OUTPUT = "input", "embedding"
_NOISY = (  # messages of the (deprecated but working) TorchScript exporter
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
    r"Constant folding - Only steps=1",
)


@functools.cache
def _path_module_class() -> type:
    import torch.nn as nn

    class ResolutionPath(nn.Module):
        """``model``'s embedding path for one input side, as a plain module to trace."""

        def __init__(self, model: nn.Module, resolution: int) -> None:
            super().__init__()
            self.model = model
            self.resolution = resolution

        def forward(self, x):  # noqa: ANN001, ANN202 - traced
            if self.resolution == self.model.input_size:
                return self.model.forward_trunk(x)
            return self.model.forward_branch(x, self.resolution)

    return ResolutionPath


def _export_one(model: BTNet, resolution: int, path: Path, opset: int) -> None:
    import torch

    module = _path_module_class()(model, resolution).eval()
    device = next(model.parameters()).device
    probe = torch.zeros(2, 3, resolution, resolution, device=device)
    with warnings.catch_warnings():
        for message in _NOISY:
            warnings.filterwarnings("ignore", message=message)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module, (probe,), str(path), input_names=[_INPUT], output_names=[_OUTPUT],
            dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


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
    """Export one ONNX model per resolution and a ``manifest.json`` to ``out_dir``.

    Each file is checked with onnxruntime against torch (max abs difference ≤ ``atol``) before
    anything is written to ``out_dir``.

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
    flags = {m: m.training for m in model.modules()}
    reference = TorchBTNet(model)  # puts the model in eval mode
    rng = np.random.default_rng(0)
    try:
        def write(folder: Path) -> list[str]:
            files = {}
            for r in sides:
                path = folder / f"btnet_r{r}.onnx"
                _export_one(model, r, path, opset)
                x = samples[r] if samples and r in samples else rng.standard_normal((4, 3, r, r)).astype(np.float32)
                diff = float(np.abs(_OnnxSession(path).run(x) - reference.run(r, x)).max())
                if not diff <= atol:
                    raise ArtifactError(f"the ONNX model for {r}×{r} differs from torch by {diff:.3g} > atol={atol}")
                files[str(r)] = {"path": path.name, "sha256": _file_sha256(path), "bytes": path.stat().st_size,
                                 "max_abs_diff": diff}
            manifest = _manifest(model, files, opset)
            (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            return [MANIFEST_NAME, *(f["path"] for f in files.values())]

        write_folder(out_dir, write, overwrite=overwrite)
    finally:
        for module, flag in flags.items():
            module.training = flag
    return _read_json(Path(out_dir) / MANIFEST_NAME, "ONNX manifest")


def _manifest(model: BTNet, files: dict[str, Any], opset: int) -> dict[str, Any]:
    from .hub import trunk_fingerprint

    cfg = model.pretrained_cfg
    return {
        "format": _FORMAT,
        "format_version": 1,
        "library_version": _library_version(),
        "input_size": model.input_size,
        "embed_dim": model.embed_dim,
        "resolutions": sorted(int(r) for r in files),
        "files": files,
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


class OnnxBTNet:
    """The exported resolutions of a BTNet, run with onnxruntime (no torch needed).

    Args:
        onnx_dir: folder written by :func:`export_onnx`.
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, onnx_dir: str | os.PathLike, providers: Sequence[Any] | None = None) -> None:
        self.root = Path(onnx_dir).expanduser()
        manifest = _read_json(self.root / MANIFEST_NAME, "ONNX manifest")
        if manifest.get("format") != _FORMAT:
            raise ArtifactError(f"{self.root / MANIFEST_NAME} is not a BTNet ONNX manifest (format {manifest.get('format')!r})")
        _check_version(manifest, f"ONNX manifest {self.root / MANIFEST_NAME}")
        self.manifest = manifest
        self.input_size = int(manifest["input_size"])
        self.embed_dim = int(manifest["embed_dim"])
        self.mean = np.asarray(manifest["input"]["mean"], dtype=np.float32)
        self.std = np.asarray(manifest["input"]["std"], dtype=np.float32)
        self.sessions: dict[int, _OnnxSession] = {}
        for key, record in manifest["files"].items():
            path = _inside(self.root, record["path"], "ONNX file")
            _verify_file(path, record, f"ONNX model for resolution {key}")
            self.sessions[int(key)] = _OnnxSession(path, providers)
        if self.input_size not in self.sessions:
            raise ArtifactError(f"{self.root} has no trunk model ({self.input_size}×{self.input_size}); it holds {sorted(self.sessions)}")
        self.resolutions = tuple(sorted(self.sessions))

    def prepare(self, ctx_id: int = -1) -> None:
        """``ctx_id < 0``: CPU; otherwise CUDA device ``ctx_id`` when onnxruntime has it."""
        import onnxruntime

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        providers: list[Any] = (
            [("CUDAExecutionProvider", {"device_id": ctx_id}), "CPUExecutionProvider"] if ctx_id >= 0 and cuda
            else ["CPUExecutionProvider"]
        )
        for session in self.sessions.values():
            session.session.set_providers(providers)

    def run(self, resolution: int, x: np.ndarray) -> np.ndarray:
        """Raw embeddings ``(N, D)`` of normalised ``N×3×r×r`` inputs of side ``resolution``."""
        if resolution not in self.sessions:
            raise ResolutionError(f"no ONNX model for {resolution}×{resolution}; exported: {self.resolutions}")
        if x.ndim != 4 or x.shape[1:] != (3, resolution, resolution):
            raise InputImageError(f"expected N×3×{resolution}×{resolution} input, got {x.shape}")
        return self.sessions[resolution].run(x)


def register(subparsers: Any) -> None:
    """Add ``btnet export`` to the ``btnet`` command."""
    from .cli import _ints

    p = subparsers.add_parser("export", help="export a saved BTNet to ONNX, one model per resolution")
    p.add_argument("src", help="folder written by save_pretrained, or a Hub repo id")
    p.add_argument("out_dir", help="folder for btnet_r{r}.onnx files and manifest.json")
    p.add_argument("--resolutions", type=_ints, default=None, help="sides to export, e.g. 14,112 (default: all)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--overwrite", action="store_true", help="replace existing files in out_dir")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: Any) -> int:
    from .hub import from_pretrained

    model = from_pretrained(args.src)
    manifest = export_onnx(model, args.out_dir, resolutions=args.resolutions, opset=args.opset, overwrite=args.overwrite)
    print("| resolution | file | bytes | max abs diff vs torch |\n|---|---|---|---|")
    for r in manifest["resolutions"]:
        f = manifest["files"][str(r)]
        print(f"| {r} | {f['path']} | {f['bytes']:,} | {f['max_abs_diff']:.2e} |")
    return 0
