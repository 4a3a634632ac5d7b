"""Fixed forward paths over one shared module tree: a branch is a view, built once.

A branch runs the trunk's own ``forward_features`` with a few of its modules replaced: the
branch's copies of its specific modules and norm layers, and stride-free views of the
downsampling modules before its implant point. Instead of swapping those into the trunk for the
duration of a call (which corrupts the model when calls overlap), :func:`build_view` makes a
*view* of the tree once: every module on the way from the root to a replaced slot is a shallow
copy with its own child table (``_modules``); everything else — every convolution, linear layer
and parameter of the shared trunk — is the trunk's own object. So

* a call mutates nothing: any number of threads may run any mix of paths at once;
* shared weights are not copied (a copy shares its source's ``_parameters``/``_buffers`` dicts,
  so ``.to()``, ``.half()`` and ``load_state_dict(assign=True)`` reach it too);
* each path is a static module tree that ``torch.compile`` and ``torch.export`` see whole.

A shallow copy takes its source's plain attributes when it is made; :meth:`ForwardPath.sync`
refreshes the ``training`` flags (``BTNet.train()`` calls it), and anything else changed on the
trunk afterwards (a module replaced by hand, ``set_grad_checkpointing``) needs
``BTNet.rebuild_paths()``.
"""

from __future__ import annotations

import contextvars
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

#: ``(path, make)``: ``make(module currently at path) -> replacement``.
Replacement = tuple[str, Callable[[nn.Module], nn.Module]]

_CAPTURED: contextvars.ContextVar[list | None] = contextvars.ContextVar("btnet_captured", default=None)


def shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing everything with ``module`` except its child table."""
    twin = module.__class__.__new__(module.__class__)
    twin.__dict__.update(module.__dict__)
    twin.__dict__["_modules"] = dict(module._modules)
    return twin


class _View:
    """Copy-on-write construction of a view of ``root`` (see :func:`build_view`)."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.copies: list[tuple[nn.Module, nn.Module]] = []  # (copy, source)
        self._private: set[int] = {id(root)}

    def _own(self, parent: nn.Module, name: str) -> nn.Module:
        child = parent._modules[name]
        if child is None:
            raise KeyError(name)
        if id(child) not in self._private:
            twin = shallow_copy(child)
            parent._modules[name] = twin
            self._private.add(id(twin))
            self.copies.append((twin, child))
            child = twin
        return child

    def node(self, path: str, own: bool = False) -> tuple[nn.Module, str]:
        """``(parent, name)`` of ``path`` with every module above it made private (and the
        module itself, with ``own``)."""
        *parents, name = path.split(".")
        node = self.root
        for part in parents:
            node = self._own(node, part)
        if name not in node._modules:
            raise KeyError(path)
        if own:
            self._own(node, name)
        return node, name

    def replace(self, path: str, make: Callable[[nn.Module], nn.Module]) -> None:
        parent, name = self.node(path)
        parent._modules[name] = make(parent._modules[name])

    def tap(self, path: str, hook: Callable) -> None:
        """Give the module at ``path`` (made private) a forward hook of its own."""
        parent, name = self.node(path, own=True)
        module = parent._modules[name]
        for attr in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            module.__dict__[attr] = OrderedDict(getattr(module, attr))
        module.register_forward_hook(hook)


def build_view(root: nn.Module, replacements: Sequence[Replacement] = (),
               taps: Sequence[tuple[str, Callable]] = ()) -> tuple[nn.Module, list[tuple[nn.Module, nn.Module]]]:
    """A view of ``root`` with ``replacements`` applied in order (a later path may lead through
    an earlier replacement, which is then copied, not changed) and forward hooks on ``taps``.

    Returns:
        ``(view root, [(copy, source), ...])``; ``root`` and every module in it are unchanged.
    """
    view = _View(shallow_copy(root))
    view.copies.append((view.root, root))
    for path, make in replacements:
        view.replace(path, make)
    for path, hook in taps:
        view.tap(path, hook)
    return view.root, view.copies


def _capture(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    box = _CAPTURED.get()
    if box is not None:
        box.append(output)


@contextmanager
def captured() -> Iterator[list]:
    """Collect, in this thread or task only, the outputs of tapped modules run in the block."""
    box: list = []
    token = _CAPTURED.set(box)
    try:
        yield box
    finally:
        _CAPTURED.reset(token)


class ForwardPath(nn.Module):
    """One resolution's forward: ``trunk.forward_features`` then the head, on a view.

    ``model.path(r)(x) == model(x)`` for ``x`` of side ``r``. Compile or export it per path;
    it is not registered in the model, so the model's ``state_dict`` keeps one copy of each
    tensor.
    """

    def __init__(self, resolution: int, trunk: nn.Module, head: nn.Module | None,
                 copies: Sequence[tuple[nn.Module, nn.Module]] = ()) -> None:
        super().__init__()
        self.resolution = resolution
        self.trunk = trunk
        self.head = head
        self._copies = list(copies)

    @classmethod
    def build(cls, resolution: int, trunk: nn.Module, head: nn.Module | None,
              replacements: Sequence[Replacement] = (), taps: Sequence[str] = ()) -> "ForwardPath":
        """The path of ``trunk`` + ``head`` with ``replacements`` (paths start with ``trunk.`` or
        ``head.``; ``trunk``/``head`` alone replace the whole module) and capture ``taps``."""
        holder = nn.Module()
        holder.trunk = trunk
        holder.head = head
        root, copies = build_view(holder, replacements, [(p, _capture) for p in taps])
        return cls(resolution, root.trunk, root.head, [c for c in copies if c[0] is not root])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.trunk.forward_features(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """This path's embedding head (norm state included) on its ``forward_features`` output."""
        return self.trunk.forward_head(features) if self.head is None else self.head(features)

    def sync(self, training: bool | None = None) -> None:
        """Copy the ``training`` flag of every copied module from its source, and set the path's
        own to ``training`` (its owner's), so that tools that switch the path to eval and back
        (``torch.onnx.export``) restore the owner's mode, not a default."""
        for twin, source in self._copies:
            twin.training = source.training
        if training is not None:
            self.training = training

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, {len(self._copies)} private modules"
