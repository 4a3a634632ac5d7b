"""One branch: where a resolution joins the trunk (:class:`BranchPlan`), the tensors that make
it (:class:`Branch`: copies of its specific modules and of every norm layer) and its fixed
forward paths (:class:`BranchPaths`, built over the trunk by :mod:`btnet_adapters.paths`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from . import paths, surgery
from .errors import ConfigError

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_NORM_NAME = re.compile(r"(Batch|Layer|Group|Instance|Rms|RMS)Norm")


def is_norm(module: nn.Module) -> bool:
    """Normalisation layers get per-resolution state (affine parameters and statistics)."""
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def _key(path: str) -> str:
    return path.replace(".", ":")


def module_path(key: str) -> str:
    """The module name a :class:`Branch` override key stands for (``trunk:layer1`` → ``trunk.layer1``)."""
    return key.replace(":", ".")


@dataclass(frozen=True)
class BranchPlan:
    """Where and how a resolution joins the trunk (all paths are ``BTNet`` module names)."""

    resolution: int
    stage: str
    implant: str
    implant_shape: tuple[int, ...]
    prefix: tuple[str, ...]
    downsampling: tuple[tuple[str, str], ...]
    specific: tuple[str, ...]
    norms: tuple[str, ...]


class Branch(nn.Module):
    """The tensors that make one resolution: copies of its specific modules and norm layers."""

    def __init__(self, plan: BranchPlan, overrides: dict[str, nn.Module]) -> None:
        super().__init__()
        self.plan = plan
        self.overrides = nn.ModuleDict({_key(p): m for p, m in overrides.items()})

    def replacements(self) -> list[paths.Replacement]:
        """What a path of this branch puts in the trunk's place: its own modules, then stride-free
        views of the downsampling modules (of the branch's copy where it owns one)."""
        own = [(module_path(k), _Fixed(m)) for k, m in self.overrides.items()]
        return own + [(p, _StrideFree(kind)) for p, kind in self.plan.downsampling]

    def tensors(self, keep_vars: bool = False) -> dict[str, torch.Tensor]:
        """Its tensors named as the trunk's own (``trunk.layer1.0.conv1.weight`` …)."""
        return {f"{module_path(key)}.{name}": t for key, module in self.overrides.items()
                for name, t in module.state_dict(keep_vars=keep_vars).items()}

    def load_tensors(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Copy ``state_dict`` into the branch's tensors in place, all or nothing: every key,
        shape, kind and value is checked before the first tensor is written."""
        targets = self.tensors(keep_vars=True)
        missing, unexpected = sorted(set(targets) - set(state_dict)), sorted(set(state_dict) - set(targets))
        if strict and (missing or unexpected):
            raise ConfigError(
                f"branch {self.plan.resolution} state mismatch: missing {_few(missing)}, unexpected {_few(unexpected)}")
        problems = []
        for name in sorted(set(targets) & set(state_dict)):
            src, dst = state_dict[name], targets[name]
            if not torch.is_tensor(src):
                problems.append(f"{name}: {type(src).__name__}, not a tensor")
            elif src.shape != dst.shape:
                problems.append(f"{name}: shape {tuple(src.shape)}, the branch needs {tuple(dst.shape)}")
            elif src.is_floating_point() != dst.is_floating_point():
                problems.append(f"{name}: dtype {src.dtype}, the branch needs {dst.dtype}")
            elif src.is_floating_point() and not bool(torch.isfinite(src).all()):
                problems.append(f"{name}: holds NaN or infinite values")
        if problems:
            raise ConfigError(f"branch {self.plan.resolution}: {len(problems)} tensor(s) do not fit, nothing was "
                              f"loaded: {_few(problems)}")
        with torch.no_grad():
            for name in sorted(set(targets) & set(state_dict)):
                targets[name].copy_(state_dict[name])

    def extra_repr(self) -> str:
        return f"resolution={self.plan.resolution}, implant={self.plan.implant!r}"


def _few(items: Sequence[str], n: int = 5) -> str:
    return f"{list(items[:n])}{' …' if len(items) > n else ''}"


class _Fixed:
    """Replacement factory returning a fixed module (picklable, unlike a lambda)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, old: nn.Module) -> nn.Module:
        return self.module


def identity_for(old: nn.Module) -> nn.Module:
    """Replacement factory: an identity in the slot (the prefix of a cut check)."""
    return nn.Identity()


class _StrideFree:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, old: nn.Module) -> nn.Module:
        return surgery.stride_free(old, self.kind)


class BranchPaths(NamedTuple):
    """The fixed forward paths of one branch (built once, see :mod:`btnet_adapters.paths`)."""

    serve: paths.ForwardPath  #: the branch: r-px images → embeddings
    student: paths.ForwardPath  #: the same, with its implant output captured
    teacher: paths.ForwardPath  #: the trunk at S, with its output at the implant point captured


def run_tapped(path: paths.ForwardPath, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embedding, output of the tapped implant module)`` of one call of ``path``."""
    with paths.captured() as box:
        emb = path(x)
    return emb, box[0]
