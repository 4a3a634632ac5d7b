"""Import insightface ``arcface_torch`` backbone checkpoints as BTNet trunks.

arcface_torch saves ``backbone.state_dict()`` (``model.pt``) or training checkpoints holding
``state_dict_backbone``; the zoo's ``iresnet18/34/50/100/200`` and ``mobilefacenet`` use the same
parameter names, so those weights load strictly. ``.pth``/``.pt`` files are read with
``torch.load(weights_only=True)`` (plain tensors and containers only, never arbitrary pickles),
``.safetensors`` with safetensors. Size arguments the checkpoint determines (embedding size,
MobileFaceNet width and depth) are read from its tensor shapes unless given.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .errors import ConfigError
from .hub import ArtifactError

if TYPE_CHECKING:
    from .model import BTNet
    from .resize import ResizeSpec

__all__ = [
    "ARCFACE_ARCHS",
    "KeyReport",
    "btnet_from_arcface_torch",
    "check_arcface_torch",
    "infer_arcface_kwargs",
    "load_arcface_torch",
    "read_state_dict",
    "register",
]

#: arcface_torch backbones and their timm names in this package.
ARCFACE_ARCHS = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "mobilefacenet")
#: Keys under which training checkpoints keep the backbone weights (arcface_torch first).
_NESTED_KEYS = ("state_dict_backbone", "state_dict", "model", "backbone")
_MFN_STAGES = {0: 1, 1: 3, 2: 5, 3: 7}  # MobileFaceNet block stage -> index in ``layers``


@dataclass(frozen=True)
class KeyReport:
    """How a checkpoint's tensors match a model's state dict."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

    @property
    def ok(self) -> bool:
        """Every model tensor is in the checkpoint with the right shape, and nothing else is."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        if self.ok:
            return "all keys match"

        def block(title: str, items: Sequence[str]) -> list[str]:
            shown = [f"  {item}" for item in items[:10]]
            more = [f"  … and {len(items) - 10} more"] if len(items) > 10 else []
            return [f"{title} ({len(items)}):", *shown, *more] if items else []

        lines = block("missing from the checkpoint", self.missing)
        lines += block("not in the model", self.unexpected)
        lines += block("shape differs (checkpoint vs model)",
                       [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched])
        return "\n".join(lines)


def compare_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> KeyReport:
    """Key-by-key comparison of ``state_dict`` with ``model.state_dict()``."""
    own = model.state_dict()
    return KeyReport(
        missing=tuple(sorted(set(own) - set(state_dict))),
        unexpected=tuple(sorted(set(state_dict) - set(own))),
        mismatched=tuple((k, tuple(state_dict[k].shape), tuple(own[k].shape))
                         for k in sorted(set(own) & set(state_dict)) if state_dict[k].shape != own[k].shape),
    )


def _load_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ._untrusted import read_safetensors_header
        from .hub import ArtifactLimitError

        # header length, dtypes, shapes and byte ranges checked against the file before it is read
        read_safetensors_header(path, "checkpoint", ArtifactError, ArtifactLimitError)
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ArtifactError(f"{path} is not a readable safetensors file (truncated or corrupted?): {err}") from err
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ArtifactError(
            f"{path} holds objects other than tensors and plain containers, which are never unpickled "
            f"(torch.load(weights_only=True) refused it): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupted?): {err}") from err


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The backbone tensors of an arcface_torch checkpoint (``.pt``/``.pth``/``.safetensors``).

    Unwraps training checkpoints (``state_dict_backbone``, ``state_dict``, ``model``,
    ``backbone``) and strips DDP's ``module.`` prefix.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ArtifactError(f"checkpoint not found: {path}")
    data = _load_file(path)
    for key in _NESTED_KEYS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not data:
        raise ArtifactError(f"{path} holds no state dict (got {type(data).__name__})")
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ArtifactError(
            f"{path} is not a backbone state dict: non-tensor entries {bad[:5]} (a training checkpoint keeps the "
            f"backbone under one of {_NESTED_KEYS})"
        )
    return {k.removeprefix("module."): v for k, v in data.items()}


def _check_arch(arch: str) -> None:
    if arch not in ARCFACE_ARCHS:
        raise ConfigError(f"unknown arcface_torch architecture {arch!r}; accepted: {ARCFACE_ARCHS}")


def _count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state_dict if (m := pattern.match(k))})


def infer_arcface_kwargs(state_dict: Mapping[str, torch.Tensor], arch: str) -> dict[str, Any]:
    """Model arguments the checkpoint fixes: ``num_features`` (and MobileFaceNet's ``scale``,
    ``blocks``), from tensor shapes; arguments it does not determine are left out."""
    _check_arch(arch)
    out: dict[str, Any] = {}
    if arch.startswith("iresnet"):
        if "fc.weight" in state_dict:
            out["num_features"] = int(state_dict["fc.weight"].shape[0])
        return out
    if "features.layers.2.weight" in state_dict:
        out["num_features"] = int(state_dict["features.layers.2.weight"].shape[0])
    if "layers.0.layers.0.weight" in state_dict:
        out["scale"] = max(1, int(state_dict["layers.0.layers.0.weight"].shape[0]) // 64)
    first = 1 if "layers.1.layers.0.weight" in state_dict else _count(state_dict, "layers.1.layers.")
    rest = [_count(state_dict, f"layers.{_MFN_STAGES[i]}.layers.") for i in (1, 2, 3)]
    if first and all(rest):
        out["blocks"] = (first, *rest)
    return out


def _load(path: str | os.PathLike, arch: str, strict: bool, kwargs: Mapping[str, Any]) -> tuple[dict, dict, KeyReport]:
    """(state dict, model arguments, report against a freshly built backbone)."""
    import timm

    from . import backbones  # noqa: F401 - registers the face backbones with timm

    _check_arch(arch)
    state = read_state_dict(path)
    args = {**infer_arcface_kwargs(state, arch), **kwargs}
    report = compare_state_dict(timm.create_model(arch, **args), state)
    if not report.ok:
        message = f"{path} does not fit {arch}({', '.join(f'{k}={v!r}' for k, v in args.items())}):\n{report}"
        if strict:
            raise ArtifactError(message + "\n(pass strict=False to load the matching tensors anyway)")
        warnings.warn(message, stacklevel=3)
    return state, args, report


def check_arcface_torch(path: str | os.PathLike, arch: str, **backbone_kwargs: Any) -> KeyReport:
    """Compare a checkpoint with the backbone it would load into (no error on mismatch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _load(path, arch, False, backbone_kwargs)[2]


def _matching(state: Mapping[str, torch.Tensor], report: KeyReport) -> dict[str, torch.Tensor]:
    skip = {k for k, _, _ in report.mismatched} | set(report.unexpected)
    return {k: v for k, v in state.items() if k not in skip}


def load_arcface_torch(path: str | os.PathLike, arch: str, *, strict: bool = True, **backbone_kwargs: Any) -> nn.Module:
    """An arcface_torch checkpoint as a zoo backbone (``timm.create_model(arch)``), in eval mode.

    Args:
        path: ``.pt``/``.pth`` (read with ``weights_only=True``) or ``.safetensors`` file.
        arch: one of :data:`ARCFACE_ARCHS`.
        strict: refuse any missing, unexpected or mis-shaped tensor (the report is in the error);
            ``False`` loads the matching tensors and warns with the report.
        **backbone_kwargs: model arguments overriding those read from the checkpoint.

    Returns:
        The backbone with the checkpoint's weights.
    """
    import timm

    state, args, report = _load(path, arch, strict, backbone_kwargs)
    trunk = timm.create_model(arch, **args)
    trunk.load_state_dict(_matching(state, report), strict=strict)
    return trunk.eval()


def btnet_from_arcface_torch(
    path: str | os.PathLike,
    arch: str,
    resolutions: Sequence[int] = (7, 14, 28),
    *,
    specific: str | Sequence[str] = "reference",
    resize: ResizeSpec | dict[str, Any] | None = None,
    strict: bool = True,
    **backbone_kwargs: Any,
) -> BTNet:
    """A BTNet whose trunk (and own embedding head) is an arcface_torch checkpoint.

    The branches are built from the imported weights (as ``BTNet.add_branch`` does): before
    branch training, each one runs the trunk's layers with downsampling removed.

    Returns:
        The model in eval mode; its ``config()`` rebuilds the same architecture.
    """
    import timm

    from .model import BTNet

    state, args, report = _load(path, arch, strict, backbone_kwargs)
    embed_dim = int(args.get("num_features", 512))
    model = BTNet(arch, embed_dim=embed_dim, head="backbone", specific=specific, resize=resize,
                  backbone_kwargs=args, resolutions=list(resolutions))
    model.trunk.load_state_dict(_matching(state, report), strict=strict)
    trunk = model.trunk_state_dict()
    for r in model.branch_resolutions:  # branch tensors carry the trunk's names: copy the imported values
        model.load_branch_state_dict(r, {k: trunk[k] for k in model.branch_state_dict(r)})
    zoo_name = f"btnet_{arch}"
    if timm.is_model(zoo_name):
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "architecture": zoo_name}
    return model.eval()


def register(subparsers: Any) -> None:
    """Add ``btnet import-arcface`` to the ``btnet`` command."""
    from ._parse import int_list

    p = subparsers.add_parser("import-arcface", help="turn an insightface arcface_torch checkpoint into a BTNet folder")
    p.add_argument("checkpoint", help="arcface_torch backbone weights (.pt/.pth/.safetensors)")
    p.add_argument("arch", choices=ARCFACE_ARCHS)
    p.add_argument("out_dir", help="folder to write with save_pretrained")
    p.add_argument("--resolutions", type=int_list, default=[7, 14, 28], help="branch sides (default 7,14,28)")
    p.add_argument("--license", default=None, help="licence of the weights, for the model card")
    p.add_argument("--non-strict", action="store_true", help="load the matching tensors despite a key mismatch")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_import)


def _cmd_import(args: Any) -> int:
    from .hub import save_pretrained

    model = btnet_from_arcface_torch(args.checkpoint, args.arch, args.resolutions, strict=not args.non_strict)
    folder = save_pretrained(model, args.out_dir, license=args.license, overwrite=args.overwrite)
    print(f"{args.arch} from {args.checkpoint}: branches {list(model.branch_resolutions)} -> {folder}")
    return 0
