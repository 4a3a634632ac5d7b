"""Surgery on hierarchical backbones: trace, find implant points, remove downsampling.

timm cannot start a model in the middle of its network. A branch therefore runs the trunk's
own ``forward_features`` on a fixed view of the trunk (:mod:`btnet_adapters.paths`) holding the
branch's modules in place of the trunk's and every downsampling module before the implant point
replaced by a stride-free view (:func:`stride_free`); the rest of the view is the trunk's own
modules, never a deep copy. This module finds *what* to replace: the implant point, the prefix
before it and the downsampling inside the prefix.
Everything is found by running the trunk once at its canonical size with forward hooks
(:func:`trace_modules`): module order and *measured* shapes, not ``feature_info`` promises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ResolutionError, UnknownDownsamplingError, UnsupportedBackboneError

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_CONTAINER_FORWARDS = {c.forward for c in CONTAINERS}


def is_container(module: nn.Module) -> bool:
    """A pure container: Sequential/ModuleList/ModuleDict whose ``forward`` is not overridden
    (timm's ``MixedConv2d`` is a ModuleDict with its own forward: a layer, not a container)."""
    return isinstance(module, CONTAINERS) and type(module).forward in _CONTAINER_FORWARDS
POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def spatial_side(t: object) -> int | None:
    """Side of a square feature map in NCHW, NHWC or (B, L, C) token layout, else ``None``."""
    if isinstance(t, (tuple, list)) and t:
        t = t[0]
    if not torch.is_tensor(t):
        return None
    if t.ndim == 4:
        _, a, b, c = t.shape
        if b == c:
            return int(b)
        if a == b:
            return int(a)
        return None
    if t.ndim == 3:
        side = math.isqrt(int(t.shape[1]))
        return side if side * side == t.shape[1] and side > 1 else None
    return None


@dataclass
class Call:
    """What one module did in the traced run (its first call; ``last_end`` spans all calls)."""

    start: int
    end: int = -1
    last_end: int = -1
    in_side: int | None = None
    out_side: int | None = None
    out_shape: tuple[int, ...] = ()


@dataclass
class Trace:
    """Execution order and measured shapes of every module in one run at the canonical size."""

    root: nn.Module
    calls: dict[str, Call] = field(default_factory=dict)

    def module(self, path: str) -> nn.Module:
        return self.root.get_submodule(path) if path else self.root

    def executed_children(self, path: str) -> list[str]:
        """Executed children of ``path`` in call order; un-called containers are transparent."""
        found: list[str] = []
        for name, child in self.module(path).named_children():
            sub = f"{path}.{name}" if path else name
            if sub in self.calls:
                found.append(sub)
            elif len(child._modules):
                found.extend(self.executed_children(sub))
        return sorted(found, key=lambda p: self.calls[p].start)

    def reduces(self, path: str) -> bool:
        c = self.calls[path]
        return c.in_side is not None and c.out_side is not None and c.out_side < c.in_side


def trace_modules(root: nn.Module, run: Callable[[], object], under: Sequence[str]) -> Trace:
    """Run ``run()`` once with hooks on every module of ``root`` below the ``under`` paths."""
    trace = Trace(root)
    clock = iter(range(1 << 62))
    handles = []

    def pre_hook(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            tick = next(clock)
            if path not in trace.calls:
                trace.calls[path] = Call(start=tick, in_side=spatial_side(args[0] if args else None))
        return hook

    def post_hook(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            call = trace.calls[path]
            call.last_end = next(clock)
            if call.end < 0:
                call.end = call.last_end
                call.out_side = spatial_side(output)
                out = output[0] if isinstance(output, (tuple, list)) and output else output
                call.out_shape = tuple(out.shape[1:]) if torch.is_tensor(out) else ()
        return hook

    for prefix in under:
        base = root.get_submodule(prefix)
        for name, module in base.named_modules():
            path = f"{prefix}.{name}" if name else prefix
            handles.append(module.register_forward_pre_hook(pre_hook(path)))
            handles.append(module.register_forward_hook(post_hook(path)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return trace


def _block_container(trace: Trace, path: str) -> list[str] | None:
    """Children of a pure container holding one kind of block (``blocks`` of a stage)."""
    if not is_container(trace.module(path)):
        return None
    kids = trace.executed_children(path)
    kinds = {type(trace.module(k)) for k in kids}
    return kids if kids and len(kinds) == 1 else None


def stage_units(trace: Trace, stage: str) -> list[str]:
    """The units (blocks) of a stage, in call order.

    A pure container (``nn.Sequential`` of blocks, a ResNet ``layer2``) has its children as units;
    so does a stage whose children are all blocks of one class (RegNet's ``b1``, ``b2``…). A stage
    module holding its blocks in a container (ConvNeXt, Swin, EdgeNeXt: ``downsample`` +
    ``blocks``) has that container expanded. Anything else is a single block and its own unit.
    """
    kids = trace.executed_children(stage)
    if not kids:
        return [stage]
    if is_container(trace.module(stage)):
        return kids
    if len(kids) >= 2 and len({type(trace.module(k)) for k in kids}) == 1:
        return kids
    units: list[str] = []
    expanded = False
    for kid in kids:
        blocks = _block_container(trace, kid)
        expanded |= blocks is not None
        units.extend(blocks if blocks is not None else [kid])
    return units if expanded else [stage]


def find_implant(trace: Trace, trunk_path: str, resolution: int) -> tuple[str, str]:
    """``(stage, implant)`` for a resolution: the stage where the trunk first reaches it, and
    the first unit of that stage whose output is ``resolution``×``resolution``."""
    node = trunk_path
    while True:
        target = None
        for kid in trace.executed_children(node):
            side = trace.calls[kid].out_side
            if side is not None and side <= resolution:
                target = kid
                break
        if target is None or not trace.executed_children(target) and trace.calls[target].out_side != resolution:
            raise ResolutionError(f"the trunk never outputs a {resolution}×{resolution} feature map")
        if trace.calls[target].out_side == resolution:
            break
        node = target
    while is_container(trace.module(target)):  # a container of stages: enter the stage
        inner = next(k for k in trace.executed_children(target) if trace.calls[k].out_side == resolution)
        if not is_container(trace.module(inner)) and stage_units(trace, inner) == [inner]:
            break  # ``inner`` is a block: ``target`` is the stage
        target = inner
    for unit in stage_units(trace, target):
        if trace.calls[unit].out_side == resolution:
            return target, unit
    raise ResolutionError(f"no unit of stage {target!r} outputs {resolution}×{resolution}")


def prefix_modules(trace: Trace, implant: str, under: str) -> list[str]:
    """Maximal modules below ``under`` whose every call ends at or before the implant module's."""
    cut = trace.calls[implant].last_end
    inside = {p for p, c in trace.calls.items() if p.startswith(under + ".") and c.last_end <= cut}
    return sorted(
        (p for p in inside if not any(a in inside for a in _ancestors(p))),
        key=lambda p: trace.calls[p].start,
    )


def _ancestors(path: str) -> Iterator[str]:
    parts = path.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


def find_downsampling(trace: Trace, prefix: Iterable[str]) -> list[tuple[str, str]]:
    """Every module that downsamples on the path from the input to the implant point.

    Walks down from each reducing prefix module into its reducing children; a reducing leaf must
    be a strided convolution or a pooling layer. A module that reduces while none of its children
    do downsamples inside its own ``forward`` (reshapes, functional pooling) and is refused.

    Returns:
        ``(path, kind)`` pairs, kind ``"conv"`` or ``"pool"``.
    """
    found: list[tuple[str, str]] = []

    def visit(path: str) -> None:
        module = trace.module(path)
        kids = trace.executed_children(path)
        if not kids:
            if isinstance(module, nn.Conv2d):
                found.append((path, "conv"))
            elif isinstance(module, POOLS):
                found.append((path, "pool"))
            else:
                raise UnknownDownsamplingError(
                    f"{path} ({type(module).__name__}) downsamples but is neither a strided "
                    "nn.Conv2d nor a max/avg pooling layer; the surgery cannot remove it"
                )
            return
        reducing = [k for k in kids if trace.reduces(k)]
        if not reducing:
            raise UnknownDownsamplingError(
                f"{path} ({type(module).__name__}) downsamples inside its own forward() "
                "(reshape or functional pooling); the surgery can only remove downsampling done "
                "by strided convolutions and pooling modules"
            )
        for kid in reducing:
            visit(kid)

    for path in prefix:
        if trace.reduces(path):
            visit(path)
    return found


def same_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv`` with stride 1 and "same" padding (asymmetric for even kernels), same weights."""
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    th, tw = dh * (kh - 1), dw * (kw - 1)
    pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    if any(pad):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pad, mode=mode)
    return F.conv2d(x, conv.weight, conv.bias, 1, 0, conv.dilation, conv.groups)


class StrideFreeConv2d(nn.Module):
    """A view of a convolution that runs it without its stride (weights shared, not copied).

    The view lives only in branch paths (:mod:`btnet_adapters.paths`), in place of its source,
    which it registers as ``source``: a path's tracer (ONNX, ``torch.export``) sees the weights
    as the parameters they are, and the model's own ``state_dict`` never holds the view. Parent
    modules that read their conv's geometry in ``forward`` (DaViT pads to a multiple of
    ``kernel_size`` before a stride-2 conv) see the source's, with ``stride`` 1.
    """

    #: Geometry read through to the source convolution.
    GEOMETRY = frozenset({"kernel_size", "dilation", "groups", "in_channels", "out_channels", "padding_mode"})

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.source = conv

    def __getattr__(self, name: str) -> Any:
        if name in StrideFreeConv2d.GEOMETRY:
            return getattr(self._modules["source"], name)
        return super().__getattr__(name)

    @property
    def stride(self) -> tuple[int, int]:
        """Always ``(1, 1)``: the view runs without the source's stride."""
        return (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return same_conv2d(x, self.source)

    def extra_repr(self) -> str:
        return f"view of {self.source!r} with stride 1, same padding"


def stride_free(module: nn.Module, kind: str) -> nn.Module:
    """The stride-free stand-in for a downsampling module found by :func:`find_downsampling`."""
    return StrideFreeConv2d(module) if kind == "conv" else nn.Identity()


def check_hierarchical(trace: Trace, feature_modules: Sequence[str], input_size: int) -> dict[int, str]:
    """Measured pyramid ``{side: feature module}`` of a trunk; refuse constant-reduction models."""
    pyramid: dict[int, str] = {}
    for path in feature_modules:
        call = trace.calls.get(path)
        if call is None or call.out_side is None:
            continue
        pyramid.setdefault(call.out_side, path)
    smaller = [s for s in pyramid if s < input_size]
    if len(set(pyramid)) < 2 or not smaller:
        raise UnsupportedBackboneError(
            f"the backbone is not hierarchical: its feature maps have sides {sorted(pyramid)} at "
            f"input {input_size} (constant reduction, e.g. a ViT); BTNet needs a feature pyramid"
        )
    return pyramid
