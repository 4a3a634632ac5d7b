"""BTNet: one trunk, per-resolution branches implanted into its feature pyramid.

``BTNet`` owns a timm backbone (the trunk), an embedding head and one :class:`Branch` per
branch resolution. A branch holds only what differs for its resolution — copies of its
*specific* modules and of every normalisation layer outside them — and runs the trunk's own
module tree for the rest (see :mod:`btnet_adapters.surgery`).
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import paths, routing, surgery
from .branch import Branch, BranchPaths, BranchPlan, identity_for, is_norm, module_path, run_tapped
from .embedding_head import EmbeddingHead
from .errors import ConfigError, InputImageError, ResolutionError, UnsupportedBackboneError
from .heads import HEADS, create_head
from .hub import HubMixin, default_model_class
from .images import image_list, to_pixels
from .progress import progress_bar
from .resize import ResizeSpec, resize_tensor

HEAD_KINDS = ("fc", "pool", "backbone")
SPECIFIC_RULES = ("reference", "all", "none")


@contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag
        if isinstance(module, BTNet):
            module._sync_paths()


@default_model_class  # what btnet_adapters.hub.from_pretrained builds (the hub does not import the model)
class BTNet(HubMixin, nn.Module):
    """A face embedding network that takes any input resolution.

    Args:
        backbone: a timm model name, or a timm model instance (recorded by its architecture).
        input_size: canonical size S of the trunk (112 for faces).
        resolutions: branch resolutions (sides of the trunk's feature pyramid below S);
            ``None`` builds one for every pyramid level below S that can take a branch (the
            others are skipped with a warning naming the cause).
        embed_dim: embedding size.
        specific: which modules each branch owns: ``"reference"`` (everything before the
            implant point, as the BTNet release), ``"all"``, ``"none"`` (only norm state) or a
            list of module names (e.g. ``["trunk.conv1", "trunk.layer1"]``).
        head: ``"fc"`` (arcface_torch: BN2d → dropout → flatten → linear → BN1d), ``"pool"``
            (global average pool → linear → BN1d) or ``"backbone"`` (the backbone's own
            ``forward_head`` gives the embedding, e.g. MobileFaceNet's GDC).
        num_classes: attach a margin head with this many identities (0: none).
        margin: margin head name (:data:`btnet_adapters.heads.HEADS`).
        remove: trunk module names replaced by identities before anything else (e.g.
            ``["maxpool"]`` turns timm's ResNet pyramid into the face-standard 56/28/14/7).
        backbone_kwargs: extra ``timm.create_model`` arguments.
        resize: how :meth:`embed` resamples images (default: torch bilinear, antialiased).
        drop_rate: dropout before the embedding linear layer.
        in_chans: must be 3 (accepted for timm's ``create_model`` protocol).
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        input_size: int = 112,
        resolutions: Sequence[int] | None = None,
        embed_dim: int = 512,
        specific: str | Sequence[str] = "reference",
        head: str = "fc",
        num_classes: int = 0,
        margin: str = "curricularface",
        remove: Sequence[str] = (),
        backbone_kwargs: dict[str, Any] | None = None,
        resize: ResizeSpec | dict[str, Any] | None = None,
        drop_rate: float = 0.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if in_chans != 3:
            raise ConfigError(f"BTNet takes RGB inputs (in_chans=3), got in_chans={in_chans}")
        backbone_kwargs = dict(backbone_kwargs or {})
        _check_args(input_size, head, specific, margin, num_classes)
        self.input_size = int(input_size)
        self.trunk = _create_trunk(backbone, head, backbone_kwargs)
        for path in remove:
            _replace(self.trunk, path, nn.Identity())
        self.resize_spec = resize if isinstance(resize, ResizeSpec) else ResizeSpec(**(resize or {}))
        self.pretrained_cfg = _default_cfg(self.input_size)
        self.default_cfg = self.pretrained_cfg
        self._init_config = dict(
            backbone=backbone if isinstance(backbone, str) else _architecture(backbone),
            input_size=self.input_size, embed_dim=embed_dim, head=head, num_classes=num_classes,
            margin=margin, remove=list(remove), backbone_kwargs=backbone_kwargs,
            resize=self.resize_spec.to_dict(), drop_rate=drop_rate,
            specific=specific if isinstance(specific, str) else list(specific),
        )

        features = self._trace_trunk()
        self.pyramid = surgery.check_hierarchical(self._trace, self._feature_modules(), self.input_size)
        self.head = self._build_head(head, features, embed_dim, drop_rate)
        self.embed_dim = self._measure_embed_dim(embed_dim)
        self.num_features = self.embed_dim
        self._trace = surgery.trace_modules(self, self._run_full_probe, self._traced_roots())
        self._fix_feature_info()
        available = sorted(s for s in self.pyramid if s < self.input_size)
        wanted = available if resolutions is None else sorted({int(r) for r in resolutions})
        for r in wanted:
            if r not in available:
                raise ResolutionError(
                    f"resolution {r} is not in the trunk's feature pyramid at input {self.input_size}; "
                    f"available: {available}"
                )
        self.branches = nn.ModuleDict()
        self._paths: dict[int, BranchPaths] = {}  # fixed per branch; not registered (no duplicate keys)
        self._specific_rule = specific
        failures = []
        for r in wanted:
            try:
                self.add_branch(r)
            except UnsupportedBackboneError as err:
                if resolutions is not None:
                    raise
                failures.append(f"{r}: {err}")
                warnings.warn(f"no branch for pyramid level {r}: {err}", stacklevel=2)
        if resolutions is None and not self.branches:
            raise UnsupportedBackboneError(
                f"no pyramid level of {self._init_config['backbone']} can take a branch; " + "; ".join(failures))
        self.num_classes = 0
        self.classifier: nn.Module | None = None
        if num_classes:
            self.reset_classifier(num_classes, margin)
        self._init_config["resolutions"] = list(self.branch_resolutions)
        self._note_dtype()  # the dtype forward() accepts; _apply keeps it current

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_timm(
        cls,
        model_or_name: str | nn.Module,
        input_size: int = 112,
        resolutions: Sequence[int] | None = None,
        embed_dim: int = 512,
        specific: str | Sequence[str] = "reference",
        **timm_kwargs: Any,
    ) -> "BTNet":
        """Convert a hierarchical timm backbone into a BTNet.

        BTNet options (``head``, ``num_classes``, ``margin``, ``remove``, ``resize``,
        ``drop_rate``) may be given as keywords; every other keyword goes to
        ``timm.create_model``.
        """
        own = {k: timm_kwargs.pop(k) for k in ("head", "num_classes", "margin", "remove", "resize", "drop_rate")
               if k in timm_kwargs}
        return cls(model_or_name, input_size=input_size, resolutions=resolutions, embed_dim=embed_dim,
                   specific=specific, backbone_kwargs=timm_kwargs, **own)

    def _traced_roots(self) -> list[str]:
        return ["trunk", "head"] if isinstance(self.head, nn.Module) else ["trunk"]

    def _probe(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        param = next(self.trunk.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        return torch.randn(2, 3, self.input_size, self.input_size, generator=gen).to(device)

    def _trace_trunk(self) -> torch.Tensor:
        """Trace the trunk alone (sets ``_trace``) and return its features at S."""
        box: list = []
        with _eval(self.trunk):
            try:
                self._trace = surgery.trace_modules(
                    self, lambda: box.append(self.trunk.forward_features(self._probe())), ["trunk"])
                return box[0]
            except Exception as err:  # noqa: BLE001 - reported as unsupported with its cause
                raise UnsupportedBackboneError(
                    f"the backbone fails at input {self.input_size}×{self.input_size}: {err}{self._native_size_hint()}"
                ) from err

    def _native_size_hint(self) -> str:
        """A hint naming the backbone's native input size when it differs from ``input_size``."""
        native = (getattr(self.trunk, "pretrained_cfg", None) or {}).get("input_size")
        if not native or tuple(native[-2:]) == (self.input_size, self.input_size):
            return ""
        side = int(native[-1])
        return (f". The backbone was built for {native[-2]}×{native[-1]} inputs (window or position sizes may be "
                f"tied to it): try input_size={side}, or img_size={self.input_size} where the model takes it")

    def _run_full_probe(self) -> torch.Tensor:
        with _eval(self):
            return self._embed_trunk(self._probe())

    def _build_head(self, kind: str, features: torch.Tensor, embed_dim: int, drop_rate: float) -> nn.Module | None:
        if kind == "backbone":
            return None
        channels = int(getattr(self.trunk, "num_features", 0))
        shape = tuple(features.shape[1:])
        if len(shape) != 3:
            raise UnsupportedBackboneError(f"forward_features returns shape {shape}; a C×H×W map is needed")
        channels_last = shape[0] != channels and shape[2] == channels
        c, side = (shape[2], shape[0]) if channels_last else (shape[0], shape[1])
        return EmbeddingHead(kind, c, side, embed_dim, drop_rate, channels_last)

    def _measure_embed_dim(self, embed_dim: int) -> int:
        """Check the embedding size; a backbone's own classifier is reset to ``embed_dim`` outputs."""
        with _eval(self), torch.no_grad():
            out = self._embed_trunk(self._probe())
            if out.ndim == 2 and out.shape[1] != embed_dim and self.head is None and hasattr(self.trunk, "reset_classifier"):
                self.trunk.reset_classifier(embed_dim)
                out = self._embed_trunk(self._probe())
        if out.ndim != 2:
            raise UnsupportedBackboneError(f"the embedding has shape {tuple(out.shape)}; (B, D) is needed")
        if out.shape[1] != embed_dim:
            raise ConfigError(
                f"the backbone's own head gives {out.shape[1]}-d embeddings but embed_dim={embed_dim}; "
                "pass the backbone's size argument (num_classes / num_features) or use head='fc'"
            )
        return embed_dim

    def _feature_modules(self) -> list[str]:
        info = getattr(self.trunk, "feature_info", None) or []
        return [f"trunk.{f['module']}" for f in info if isinstance(f, dict) and f.get("module")]

    def _fix_feature_info(self) -> None:
        for f in getattr(self.trunk, "feature_info", None) or []:
            call = self._trace.calls.get(f"trunk.{f.get('module')}") if isinstance(f, dict) else None
            if call is not None and call.out_side:
                f["reduction"] = self.input_size // call.out_side

    def _specific_paths(self, rule: str | Sequence[str], prefix: Sequence[str]) -> list[str]:
        if rule == "reference":
            return list(prefix)
        if rule == "none":
            return []
        if rule == "all":
            return self._traced_roots()
        names = dict(self.named_modules())
        chosen = []
        for p in rule:
            if p not in names or not p.startswith(tuple(self._traced_roots())):
                raise ConfigError(f"specific module {p!r} is not a module of the trunk/head (e.g. 'trunk.{next(iter(self.trunk._modules))}')")
            chosen.append(p)
        return [p for p in chosen if not any(a in chosen for a in surgery._ancestors(p))]

    def plan_branch(self, resolution: int, specific: str | Sequence[str] | None = None) -> BranchPlan:
        """Work out (without building) how ``resolution`` would join the trunk."""
        trace = self._trace
        stage, implant = surgery.find_implant(trace, "trunk", resolution)
        prefix = surgery.prefix_modules(trace, implant, "trunk")
        downsampling = surgery.find_downsampling(trace, prefix)
        spec = self._specific_paths(self._specific_rule if specific is None else specific, prefix)
        norms = [
            p for p in trace.calls
            if is_norm(trace.module(p))
            and not any(a in spec for a in (*surgery._ancestors(p), p))
            and not any(is_norm(trace.module(a)) for a in surgery._ancestors(p) if a in trace.calls)
        ]
        return BranchPlan(
            resolution=resolution, stage=stage, implant=implant,
            implant_shape=trace.calls[implant].out_shape, prefix=tuple(prefix),
            downsampling=tuple((p, k) for p, k in downsampling),
            specific=tuple(spec), norms=tuple(sorted(norms, key=lambda p: trace.calls[p].start)),
        )

    def add_branch(self, resolution: int, specific: str | Sequence[str] | None = None,
                   state_dict: Mapping[str, torch.Tensor] | None = None) -> BranchPlan:
        """Build the branch for ``resolution`` from the trunk's current weights, dry-run it, and
        attach it with its fixed paths, replacing any branch of that resolution.

        With ``state_dict`` (as :meth:`branch_state_dict` gives) the branch is loaded from it
        before it is attached. All or nothing: on any error the model is left as it was.
        """
        resolution = int(resolution)
        plan = self.plan_branch(resolution, specific)
        self._check_cut(plan)
        branch = Branch(plan, {p: copy.deepcopy(self.get_submodule(p)) for p in (*plan.specific, *plan.norms)})
        if state_dict is not None:
            branch.load_tensors(state_dict, strict=True)
        built = self._build_paths(branch)
        self._check_branch(branch, built)
        self.branches[str(resolution)] = branch
        self._paths[resolution] = built
        return plan

    def remove_branch(self, resolution: int) -> None:
        """Drop a branch (its inputs then go elsewhere only through :meth:`embed`)."""
        key = self._branch_key(resolution)
        self._paths.pop(key, None)
        del self.branches[str(key)]

    def _build_paths(self, branch: Branch) -> BranchPaths:
        plan = branch.plan
        replacements = branch.replacements()
        built = BranchPaths(
            serve=paths.ForwardPath.build(plan.resolution, self.trunk, self.head, replacements),
            student=paths.ForwardPath.build(plan.resolution, self.trunk, self.head, replacements, taps=[plan.implant]),
            teacher=paths.ForwardPath.build(self.input_size, self.trunk, self.head, taps=[plan.implant]),
        )
        for path in built:
            path.sync(self.training)
        return built

    def rebuild_paths(self) -> None:
        """Rebuild every branch's fixed paths from the current module tree.

        Paths are built when a branch is added or loaded; call this after replacing a module of
        the trunk or of a branch by hand, or changing a plain attribute of a trunk module (what
        :meth:`set_grad_checkpointing` does), so that branch calls see the change.
        """
        self._paths = {int(k): self._build_paths(b) for k, b in self.branches.items()}

    def _sync_paths(self) -> None:
        for built in self.__dict__.get("_paths", {}).values():
            for path in built:
                path.sync(self.training)

    def train(self, mode: bool = True) -> "BTNet":
        """Set training mode on the model and on its branch paths."""
        super().train(mode)
        self._sync_paths()
        return self

    def path(self, resolution: int) -> nn.Module:
        """The fixed module that computes raw embeddings of ``resolution``-px inputs.

        ``model.path(r)(x) == model(x)`` for ``x`` of side ``r``, without input checks. Each path
        is a static module tree over the model's own tensors: compile or export one per
        resolution (``torch.compile(model.path(14))``, ``torch.export.export(model.path(14), …)``).
        """
        if int(resolution) == self.input_size:
            path = paths.ForwardPath(self.input_size, self.trunk, self.head)
            path.training = self.training
        else:
            path = self._paths[self._branch_key(resolution)].serve
        path.pretrained_cfg = path.default_cfg = self.data_config(path.resolution)
        return path

    def data_config(self, resolution: int | None = None) -> dict[str, Any]:
        """``pretrained_cfg`` for the path of ``resolution`` (default: the trunk's): its
        ``input_size`` is ``(3, r, r)``. Each ``model.path(r)`` carries it, so
        ``timm.data.resolve_data_config(model=model.path(14))`` and ``create_transform`` feed the
        14-px branch."""
        r = self.input_size if resolution is None else int(resolution)
        if r not in self.resolutions:
            raise ResolutionError(f"no path for resolution {r}; available: {self.resolutions}")
        return {**self.pretrained_cfg, "input_size": (3, r, r), "fixed_input_size": True}

    def _check_cut(self, plan: BranchPlan) -> None:
        """Prefix + suffix of the unmodified trunk at S must reproduce the trunk exactly."""
        x = self._probe()
        tapped = paths.ForwardPath.build(self.input_size, self.trunk, self.head, taps=[plan.implant])
        resumed = paths.ForwardPath.build(self.input_size, self.trunk, self.head,
                                          [(p, identity_for) for p in plan.prefix])
        with _eval(self), torch.no_grad():
            tapped.sync()
            resumed.sync()
            with paths.captured() as box:
                full = tapped.trunk.forward_features(x)
            if not box:
                raise UnsupportedBackboneError(f"the implant module {plan.implant} never ran")
            try:
                rest = resumed.trunk.forward_features(box[0])
            except Exception as err:  # noqa: BLE001 - the cause is reported with the cut
                raise UnsupportedBackboneError(
                    f"the trunk cannot be resumed after {plan.implant}: {type(err).__name__}: {err}") from err
        if rest.shape != full.shape or not torch.allclose(rest, full, rtol=1e-4, atol=1e-5):
            raise UnsupportedBackboneError(
                f"cutting the trunk after {plan.implant} does not reproduce it: its forward applies "
                "operations outside modules around that point, so a branch cannot be implanted there"
            )

    def _check_branch(self, branch: Branch, built: BranchPaths) -> None:
        plan = branch.plan
        resolution = plan.resolution
        x = torch.zeros(1, 3, resolution, resolution, device=self._probe().device)
        try:
            with _eval(self), _eval(branch), torch.no_grad():
                built.student.sync()
                with paths.captured() as box:
                    built.student(x)
                z = box[0]
        except Exception as err:  # noqa: BLE001 - any failure means the family is unsupported
            raise UnsupportedBackboneError(
                f"the {resolution}-px branch (implant {plan.implant}) fails on a {resolution}×{resolution} "
                f"input: {type(err).__name__}: {err}"
            ) from err
        finally:
            built.student.sync()
        got = tuple(z.shape[1:])
        if got != plan.implant_shape:
            cause = ("a module pads the map by its own rule (e.g. to a multiple of its kernel), which adds pixels "
                     "once the stride is gone"
                     if got[0] == plan.implant_shape[0] and got[-1] > plan.implant_shape[-1]
                     else "some downsampling was not removed")
            raise UnsupportedBackboneError(
                f"the {resolution}-px branch reaches {plan.implant} with shape {got}, the trunk "
                f"with {plan.implant_shape}: {cause}"
            )

    # ----------------------------------------------------------------- attributes
    @property
    def branch_resolutions(self) -> tuple[int, ...]:
        """Branch sides, sorted (without the trunk's)."""
        return tuple(sorted(int(k) for k in self.branches))

    @property
    def resolutions(self) -> tuple[int, ...]:
        """All input sides :meth:`forward` accepts, sorted, the trunk's ``input_size`` last."""
        return (*self.branch_resolutions, self.input_size)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (what ``save_pretrained`` records)."""
        cfg = copy.deepcopy(self._init_config)
        cfg["resolutions"] = list(self.branch_resolutions)
        cfg["num_classes"] = self.num_classes
        return cfg

    def _branch_key(self, resolution: int) -> int:
        if str(resolution) not in self.branches:
            raise ResolutionError(f"no branch for resolution {resolution}; available: {self.branch_resolutions}")
        return int(resolution)

    # ----------------------------------------------------------------- forward paths
    def _embed_trunk(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk.forward_features(x)
        return self.trunk.forward_head(f) if self.head is None else self.head(f)

    def _branch_forward(self, x: torch.Tensor, resolution: int, with_implant: bool = False):
        """Branch ``resolution``'s fixed path (see :mod:`btnet_adapters.paths`): nothing is
        changed during the call, so calls from any number of threads can overlap."""
        built = self._paths[resolution]
        if not with_implant:
            return built.serve(x)
        return run_tapped(built.student, x)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Raw embeddings of ``input_size`` images through the trunk."""
        return self._embed_trunk(x)

    def forward_branch(self, x: torch.Tensor, resolution: int) -> torch.Tensor:
        """Raw embeddings of ``resolution``-px images through that branch."""
        key = self._branch_key(resolution)
        side = self._check_input(x)
        if side != key:
            raise InputImageError(f"forward_branch({resolution}) takes {key}×{key} inputs, got {side}×{side}")
        return self._branch_forward(x, key)

    def forward_with_implant(self, x: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, implant features)`` for distillation.

        ``x`` of side ``resolution`` runs the branch and returns its implanted features; ``x`` of
        side ``input_size`` runs the trunk and returns the trunk's features at the same point.
        """
        key = self._branch_key(resolution)
        side = self._check_input(x)
        if side == key:
            return self._branch_forward(x, key, with_implant=True)
        if side != self.input_size:
            raise InputImageError(f"forward_with_implant takes sides {key} or {self.input_size}, got {side}")
        return run_tapped(self._paths[key].teacher, x)

    def _dtype(self) -> torch.dtype:
        """The floating dtype of the model's parameters (kept by :meth:`_apply`, so a call reads
        no parameter to learn it)."""
        return self.__dict__.get("_param_dtype", torch.float32)

    def _note_dtype(self) -> None:
        param = next((p for p in self.parameters() if p.is_floating_point()), None)
        self._param_dtype = param.dtype if param is not None else torch.float32

    def _apply(self, fn: Any, recurse: bool = True) -> "BTNet":
        out = super()._apply(fn, recurse)
        self._note_dtype()
        return out

    def _check_input(self, x: Any) -> int:
        if not torch.is_tensor(x) or x.ndim != 4:
            raise InputImageError(
                f"forward takes a B×3×H×W tensor, got {type(x).__name__} "
                f"{tuple(x.shape) if torch.is_tensor(x) else ''}; use embed() for lists of images"
            )
        if not x.is_floating_point() or (x.dtype != self._dtype() and not torch.is_autocast_enabled(x.device.type)):
            raise InputImageError(
                f"forward takes normalised {self._dtype()} tensors ((pixels/255 - 0.5) / 0.5), got {x.dtype}; "
                + ("use embed() for uint8 pixels" if not x.is_floating_point() else f"cast with x.to({self._dtype()})")
            )
        b, c, h, w = x.shape
        if b == 0:
            raise InputImageError("empty batch: forward needs at least one image")
        if c != 3:
            raise InputImageError(f"input has {c} channels; BTNet takes 3-channel (RGB) tensors")
        if h != w:
            raise InputImageError(
                f"forward takes square inputs with side in {self.resolutions}, got {h}×{w}; "
                "use embed() to route and resize images of any size"
            )
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and not torch.isfinite(x).all():
            raise InputImageError("input contains NaN or infinite values")
        return int(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) embeddings of a square batch whose side is one of :attr:`resolutions`.

        ``x`` is a B×3×S×S tensor (B ≥ 1, S in :attr:`resolutions`) of the model's dtype
        (float32 unless converted; another float dtype only under autocast), normalised as
        ``pretrained_cfg`` says ((pixels / 255 − 0.5) / 0.5), with finite values. uint8, float64
        (for a float32 model), non-square, unknown sides and other types raise
        :class:`~btnet_adapters.errors.InputImageError` / :class:`~btnet_adapters.errors.ResolutionError`;
        :meth:`embed` takes raw images of any size. The call changes nothing in the model
        (eval mode), so any number of threads may call one instance at once.
        """
        side = self._check_input(x)
        if side == self.input_size:
            return self._embed_trunk(x)
        if str(side) not in self.branches:
            raise ResolutionError(
                f"no path for {side}×{side} inputs; forward takes sides {self.resolutions}. "
                "Use embed() to route and resize images of any size"
            )
        return self._branch_forward(x, side)

    # ----------------------------------------------------------------- timm model API
    def _path_of(self, x: torch.Tensor) -> paths.ForwardPath | None:
        """The branch path for ``x``'s side, ``None`` for the trunk (input checked)."""
        side = self._check_input(x)
        if side == self.input_size:
            return None
        if side not in self._paths:
            raise ResolutionError(f"no path for {side}×{side} inputs; accepted sides {self.resolutions}")
        return self._paths[side].serve

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's final feature map for the path of ``x``'s side (before the head).

        The output remembers its resolution, so ``forward_head(forward_features(x)) == forward(x)``
        (the head's norm state is per resolution).
        """
        path = self._path_of(x)
        features = (self.trunk if path is None else path.trunk).forward_features(x)
        features._btnet_resolution = self.input_size if path is None else path.resolution
        return features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, resolution: int | None = None) -> torch.Tensor:
        """Raw embeddings from :meth:`forward_features` output (they are the pre-logits: the margin
        head needs labels). ``resolution`` picks the head's norm state; default: the resolution the
        features came from (a tensor from elsewhere goes to the trunk's head)."""
        r = int(resolution if resolution is not None else getattr(x, "_btnet_resolution", self.input_size))
        if r == self.input_size:
            return self.trunk.forward_head(x) if self.head is None else self.head(x)
        return self._paths[self._branch_key(r)].serve.forward_head(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates`` on the path of ``x``'s side: the trunk's stage outputs
        at ``input_size``, the branch path's (at its own sides) for a branch input."""
        path = self._path_of(x)
        trunk = self.trunk if path is None else path.trunk
        if not callable(getattr(trunk, "forward_intermediates", None)):
            raise UnsupportedBackboneError(f"{type(self.trunk).__name__} has no forward_intermediates()")
        return trunk.forward_intermediates(x, indices=indices, norm=norm, stop_early=stop_early,
                                           output_fmt=output_fmt, intermediates_only=intermediates_only)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The trunk's ``feature_info`` (measured reductions at ``input_size``), module names as
        BTNet's (``trunk.layer2``)."""
        info = getattr(self.trunk, "feature_info", None) or []
        return [{**f, "module": f"trunk.{f['module']}"} for f in info if isinstance(f, dict) and "module" in f]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing in the trunk and every branch path (timm's switch)."""
        if not callable(getattr(self.trunk, "set_grad_checkpointing", None)):
            raise UnsupportedBackboneError(f"{type(self.trunk).__name__} has no set_grad_checkpointing()")
        self.trunk.set_grad_checkpointing(enable)
        for branch in self.branches.values():  # the branch's own copies carry the flag too
            for key, module in branch.overrides.items():
                for name, sub in module.named_modules():
                    source = self.get_submodule(".".join(p for p in (module_path(key), name) if p))
                    if hasattr(source, "grad_checkpointing"):
                        sub.grad_checkpointing = source.grad_checkpointing
        self.rebuild_paths()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups (layer decay): the trunk's groups under ``trunk.``, then the
        head and the branches."""
        inner = self.trunk.group_matcher(coarse) if callable(getattr(self.trunk, "group_matcher", None)) else {}

        def scoped(pattern: Any) -> Any:
            if isinstance(pattern, str):
                return r"^trunk\.(?:" + re.sub(r"(^|\||\()\^", r"\1", pattern) + ")"
            if isinstance(pattern, (list, tuple)):
                return type(pattern)(scoped(p) if isinstance(p, str) else
                                     (scoped(p[0]), *p[1:]) if isinstance(p, tuple) and p and isinstance(p[0], str)
                                     else p for p in pattern)
            return pattern

        groups = {k: scoped(v) for k, v in inner.items()} or {"stem": r"^trunk\.", "blocks": []}
        return {**groups, "head": r"^head\.", "branches": r"^branches\.(\d+)"}

    # ----------------------------------------------------------------- embedding API
    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values in [0, 255] → the model's input normalisation (``pretrained_cfg``)."""
        mean = torch.tensor(self.pretrained_cfg["mean"], device=pixels.device).view(-1, 1, 1) * 255
        std = torch.tensor(self.pretrained_cfg["std"], device=pixels.device).view(-1, 1, 1) * 255
        return (pixels - mean) / std

    def route(self, width: int, height: int, indicator: str = "max", strategy: str = "ceil",
              effective_side: float | None = None) -> int:
        """The resolution an image of ``width``×``height`` goes to.

        With ``indicator="effective"`` give the image's ``effective_side`` (pixels of detail it
        carries, e.g. :func:`btnet_adapters.effective.effective_side`; ``inf`` = not limited):
        the image goes by ``min(max(W, H), effective_side)``.
        """
        if indicator == routing.EFFECTIVE:
            if effective_side is None:
                raise ConfigError("indicator='effective' needs effective_side= (pixels of detail the image "
                                  "carries); embed(indicator='effective') measures it from the pixels")
            return routing.select_resolution_effective(width, height, effective_side, self.resolutions, strategy)
        return routing.select_resolution(width, height, self.resolutions, indicator, strategy)

    @torch.no_grad()
    def embed(
        self,
        images: Any,
        indicator: str = "max",
        strategy: str = "ceil",
        batch_size: int = 64,
        flip: bool = False,
        normalize: bool = True,
        progress: bool | None = None,
        calibration: Any = None,
    ) -> torch.Tensor:
        """Embed images of any size: route each one, resize it to its branch, batch per branch.

        The input contract (anything else raises :class:`~btnet_adapters.errors.InputImageError`
        or :class:`~btnet_adapters.errors.ConfigError` naming what is accepted):

        * ``images`` is a list or tuple of images; one image not in a list (a PIL image, an
          H×W(×C) array, a C×H×W tensor) is one image and gives shape ``(1, D)``; an N×H×W×C
          uint8 array or an N×C×H×W tensor is N images. Strings (paths), dicts, sets and
          ``None`` are refused.
        * One image is a PIL image, an H×W or H×W×C **uint8** numpy array (C = 1 or 3, RGB), or a
          C×H×W tensor: uint8 in [0, 255], or float in **[0, 1]** — float tensors holding 0-255
          values are refused (pass uint8, or divide by 255), never scaled a second time.
        * Layouts that look swapped (a C×H×W numpy array, an H×W×C tensor) are refused with
          the fix; NaN or infinite values and empty images are refused.

        A model in eval mode is not changed by the call, so one instance serves many threads.
        A model in training mode is put in eval mode for the call and restored afterwards.

        Args:
            images: see above.
            indicator: ``"max"``, ``"min"`` or ``"avg"`` of width and height, or ``"effective"``:
                ``min(max(W, H), effective side)``, the effective side estimated from each
                image's pixels (:mod:`btnet_adapters.effective`), so an enlarged or blurred face
                goes to the branch its detail fits and is resized down to it.
            strategy: ``"ceil"``, ``"near"`` or ``"floor"`` allocation to :attr:`resolutions`.
            batch_size: images per forward pass (an int ≥ 1).
            flip: add the embedding of the horizontally flipped image (flip TTA).
            normalize: L2-normalise (raw embeddings otherwise).
            progress: tqdm bar on a terminal, log lines otherwise (default: when there are more than
                8 batches).
            calibration: :class:`btnet_adapters.effective.EffectiveCalibration` for
                ``indicator="effective"`` (default: the bundled ORL calibration).

        Returns:
            ``(N, embed_dim)`` float32 CPU tensor, in input order.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        batch_size = int(batch_size)
        images = image_list(images)
        if len(images) == 0:
            raise InputImageError("embed() got no images")
        pixels = [to_pixels(img, i) for i, img in enumerate(images)]
        if calibration is not None and indicator != routing.EFFECTIVE:
            raise ConfigError(f"calibration is only used with indicator='effective', not {indicator!r}")
        if indicator == routing.EFFECTIVE:
            from .effective import route_pixels

            targets = [int(r) for r in route_pixels(pixels, self.resolutions, strategy, calibration)]
        else:
            targets = [self.route(p.shape[2], p.shape[1], indicator, strategy) for p in pixels]
        device = next(self.parameters()).device
        out = torch.empty(len(pixels), self.embed_dim)
        jobs = []
        for r in sorted(set(targets)):
            idx = [i for i, t in enumerate(targets) if t == r]
            jobs += [(r, idx[s:s + batch_size]) for s in range(0, len(idx), batch_size)]
        bar = progress_bar(jobs, desc="embed", unit="batch", disable=not (progress or (progress is None and len(jobs) > 8)))
        training = any(m.training for m in self.modules())
        with _eval(self) if training else nullcontext():
            for r, idx in bar:
                batch = torch.stack([resize_tensor(pixels[i], r, self.resize_spec) for i in idx]).to(device)
                x = self.normalize(batch).to(self._dtype())
                emb = self(x)
                if flip:
                    emb = emb + self(torch.flip(x, dims=[3]))
                out[idx] = emb.float().cpu()
        return F.normalize(out, dim=1) if normalize else out

    # ----------------------------------------------------------------- branch state
    def branch_state_dict(self, resolution: int) -> dict[str, torch.Tensor]:
        """Exactly the tensors that make ``resolution``: its specific modules and norm state,
        named as the trunk's own tensors (``trunk.layer1.0.conv1.weight`` …)."""
        return self.branches[str(self._branch_key(resolution))].tensors()

    def load_branch_state_dict(self, resolution: int, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load tensors produced by :meth:`branch_state_dict` into the branch of ``resolution``,
        in place and all or nothing: every tensor is checked (names, shapes, kinds, finite
        values) before the first one is written, so on an error the branch is unchanged."""
        self.branches[str(self._branch_key(resolution))].load_tensors(state_dict, strict=strict)

    def branch_parameters(self, resolution: int) -> Iterator[nn.Parameter]:
        """The parameters that belong to ``resolution`` alone."""
        return self.branches[str(self._branch_key(resolution))].parameters()

    def trunk_state_dict(self) -> dict[str, torch.Tensor]:
        """Trunk and embedding head tensors (no branches, no classifier)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("trunk.", "head."))}

    # ----------------------------------------------------------------- classifier
    def reset_classifier(self, num_classes: int, margin: str = "curricularface") -> None:
        """Attach a fresh margin head (CurricularFace by default); 0 removes it."""
        self.num_classes = int(num_classes)
        self.classifier = create_head(margin, self.embed_dim, num_classes) if num_classes else None
        self._init_config["margin"] = margin

    def get_classifier(self) -> nn.Module | None:
        """The margin head (``None`` without one); call it as ``head(embeddings, labels)``."""
        return self.classifier


def _check_args(input_size: int, head: str, specific: Any, margin: str, num_classes: int) -> None:
    if int(input_size) < 8:
        raise ConfigError(f"input_size must be at least 8 pixels, got {input_size}")
    if head not in HEAD_KINDS:
        raise ConfigError(f"unknown head {head!r}; accepted: {HEAD_KINDS}")
    if isinstance(specific, str) and specific not in SPECIFIC_RULES:
        raise ConfigError(f"unknown specific rule {specific!r}; accepted: {SPECIFIC_RULES} or a list of module names")
    if margin not in HEADS:
        raise ConfigError(f"unknown margin head {margin!r}; accepted: {tuple(HEADS)}")
    if int(num_classes) < 0:
        raise ConfigError(f"num_classes must be >= 0, got {num_classes}")


def _create_trunk(backbone: str | nn.Module, head: str, kwargs: dict[str, Any]) -> nn.Module:
    if isinstance(backbone, nn.Module):
        trunk = backbone
    elif isinstance(backbone, str):
        if head != "backbone":
            if kwargs.get("num_classes", 0):
                raise ConfigError("num_classes in backbone kwargs conflicts with BTNet's own head; use head='backbone'")
            kwargs = {**kwargs, "num_classes": 0}
        try:
            trunk = timm.create_model(backbone, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise UnsupportedBackboneError(f"unknown timm model {backbone!r}: {err}") from err
            raise
        except TypeError as err:  # a keyword the backbone's class does not take
            raise ConfigError(f"the backbone {backbone!r} does not take the keywords {sorted(kwargs)}: {err}") from err
    else:
        raise ConfigError(f"backbone must be a timm model name or nn.Module, got {type(backbone).__name__}")
    if not callable(getattr(trunk, "forward_features", None)):
        raise UnsupportedBackboneError(f"{type(trunk).__name__} has no forward_features(); BTNet needs a timm-style backbone")
    if head == "backbone" and not callable(getattr(trunk, "forward_head", None)):
        raise UnsupportedBackboneError(f"{type(trunk).__name__} has no forward_head(); use head='fc'")
    return trunk


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    try:
        parent = root.get_submodule(parent_path) if parent_path else root
        parent._modules[name]  # noqa: B018 - existence check
    except (AttributeError, KeyError) as err:
        raise ConfigError(f"cannot remove {path!r}: the trunk has no such module") from err
    parent._modules[name] = module


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def _default_cfg(input_size: int) -> dict[str, Any]:
    return dict(
        input_size=(3, input_size, input_size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        interpolation="bilinear", crop_pct=1.0, num_classes=0, classifier="classifier",
        first_conv=None, architecture=None,
    )
