"""The package's imports run one way: down (README, "Architecture").

The import graph is read from the source with :mod:`ast`, nothing is imported. Every
``import`` / ``from … import`` statement of every module of ``btnet_adapters`` counts, at module
level or inside a function, method, class or ``try`` block: a function-local import runs when the
function is called, so it ties the two modules together as much as a top-level one. Relative
imports are resolved; ``from pkg import name`` is an import of the module ``pkg.name`` when there
is one, else of ``pkg``. ``importlib.import_module("btnet_adapters.…")`` with a literal name and
the names listed in a module's ``COMMAND_MODULES`` (the command groups :mod:`btnet_adapters.cli`
loads with importlib) count as imports too.

Not counted:

* imports under ``if TYPE_CHECKING:``. They never execute; they only name classes for
  annotations, which may point up (the hub annotates its functions with ``BTNet`` while the model
  mixes the hub's ``HubMixin`` in);
* Python importing a module's parent packages first (``import btnet_adapters.hub`` runs
  ``btnet_adapters/__init__.py``): that is how packages load, not a dependency a module chose.

The checks: the graph has no cycle; no module outside the CLI layer imports a CLI module
(``btnet_adapters/cli.py`` and every ``*/cli.py``); every module belongs to one of the
:data:`LAYERS` and imports only from its own layer or the ones below. Failures name the modules
and the ``file:line`` of each offending import.
"""

from __future__ import annotations

import ast
import importlib.util
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "btnet_adapters"

#: The layers, bottom up (README, "Architecture"). A module is in the layer of the longest entry
#: that is its name or a package above it (the package root itself only by its exact name);
#: every module named ``cli`` is in the top layer, :data:`CLI_LAYER`.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("btnet_adapters.errors", "btnet_adapters._atomic", "btnet_adapters._json", "btnet_adapters._untrusted",
                     "btnet_adapters._version", "btnet_adapters._zoo_table", "btnet_adapters.progress")),
    ("pixels and routing", ("btnet_adapters.images", "btnet_adapters.resize", "btnet_adapters.routing",
                            "btnet_adapters.effective", "btnet_adapters.data", "btnet_adapters._parse")),
    ("network parts", ("btnet_adapters.surgery", "btnet_adapters.paths", "btnet_adapters.branch",
                       "btnet_adapters.heads", "btnet_adapters.embedding_head", "btnet_adapters.backbones")),
    ("artifacts", ("btnet_adapters.hub",)),
    ("model", ("btnet_adapters.model",)),
    ("around the model", ("btnet_adapters", "btnet_adapters.zoo", "btnet_adapters.cost",
                          "btnet_adapters.checkpoints", "btnet_adapters.export", "btnet_adapters.insightface")),
    ("applications", ("btnet_adapters.evaluate", "btnet_adapters.analysis", "btnet_adapters.train",
                      "btnet_adapters.reproduce")),
)
CLI_LAYER = "command line"


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where})"


def package_root(package: str = PACKAGE) -> Path:
    spec = importlib.util.find_spec(package)  # finds the package without running it
    assert spec is not None and spec.origin, f"{package} is not installed"
    return Path(spec.origin).parent


def find_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file of every module of the package under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    """The package's modules one module imports, with their lines (``if TYPE_CHECKING:`` skipped)."""

    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]) -> None:
        self.modules = modules
        self.base = module.split(".") if is_package else module.split(".")[:-1]
        self.found: list[tuple[str, int]] = []

    def _add(self, name: str, line: int) -> None:
        """The module ``name`` is, or the one it is an attribute of (nothing outside the package)."""
        while name and name not in self.modules:
            name = name.rpartition(".")[0]
        if name:
            self.found.append((name, line))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.base[: len(self.base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        for alias in node.names:  # ``from pkg import mod`` imports pkg.mod; ``from mod import name``, mod
            name = f"{origin}.{alias.name}"
            self._add(name if name in self.modules else origin, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node.args[0].value, node.lineno)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if node.value is not None and any(isinstance(t, ast.Name) and t.id == "COMMAND_MODULES" for t in targets):
            for name in ast.literal_eval(node.value):
                self._add(name, node.lineno)
        self.generic_visit(node)

    visit_AnnAssign = visit_Assign


def import_graph(root: Path, package: str = PACKAGE) -> tuple[dict[str, Path], list[Import]]:
    """The package's modules and every import between two of them (see the module docstring)."""
    modules = find_modules(root, package)
    imports = []
    for module, path in modules.items():
        collector = _Collector(module, path.name == "__init__.py", modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        where = path.relative_to(root.parent).as_posix()
        imports += [Import(module, target, f"{where}:{line}")
                    for target, line in sorted(set(collector.found), key=lambda f: (f[1], f[0])) if target != module]
    return modules, imports


def _is_cli(module: str) -> bool:
    return module.rpartition(".")[2] == "cli"


def layer_of(module: str, package: str = PACKAGE) -> str | None:
    if _is_cli(module):
        return CLI_LAYER
    best, name = -1, None
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            exact_only = prefix == package
            if (module == prefix or (not exact_only and module.startswith(prefix + "."))) and len(prefix) > best:
                best, name = len(prefix), layer
    return name


def find_cycles(modules: dict[str, Path], imports: list[Import]) -> list[tuple[list[str], list[Import]]]:
    """Each group of modules that import each other (a strongly connected component), with one
    shortest cycle through its first module."""
    out: dict[str, list[Import]] = {m: [] for m in modules}
    for imp in imports:
        out[imp.source].append(imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for imp in out[v]:
            w = imp.target
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(modules):
        if v not in index:
            connect(v)
    cycles = []
    for group in groups:
        start = min(group)
        came: dict[str, Import | None] = {start: None}
        queue = deque([start])
        closing = None
        while queue and closing is None:
            v = queue.popleft()
            for imp in out[v]:
                if imp.target == start:
                    closing = imp
                    break
                if imp.target in group and imp.target not in came:
                    came[imp.target] = imp
                    queue.append(imp.target)
        path = [closing]
        while (step := came[path[-1].source]) is not None:
            path.append(step)
        cycles.append((sorted(group), path[::-1]))
    return cycles


def cycle_report(cycles: list[tuple[list[str], list[Import]]]) -> str:
    return "\n".join(f"{len(group)} modules import each other: {', '.join(group)}\n  e.g. "
                     + " -> ".join([c[0].source] + [f"{i.target} ({i.where})" for i in c])
                     for group, c in cycles)


def cli_imports(imports: list[Import]) -> list[Import]:
    """Imports of a CLI module by a module outside the CLI layer."""
    return [i for i in imports if _is_cli(i.target) and not _is_cli(i.source)]


def upward_imports(imports: list[Import]) -> list[str]:
    order = [name for name, _ in LAYERS] + [CLI_LAYER]
    problems = []
    for imp in imports:
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is not None and dst is not None and order.index(dst) > order.index(src):
            problems.append(f"{imp}: layer {src!r} imports from the higher layer {dst!r}")
    return problems


# --------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    return import_graph(package_root())


def test_the_graph_sees_function_local_imports(graph) -> None:
    modules, imports = graph
    assert len(modules) > 50 and "btnet_adapters.cli" in modules and "btnet_adapters" in modules
    edges = {(i.source, i.target) for i in imports}
    assert ("btnet_adapters.model", "btnet_adapters.effective") in edges  # inside BTNet.embed
    assert ("btnet_adapters.cli", "btnet_adapters.evaluate.cli") in edges  # COMMAND_MODULES
    assert ("btnet_adapters.hub", "btnet_adapters.model") not in edges  # only under TYPE_CHECKING


def test_no_import_cycles(graph) -> None:
    cycles = find_cycles(*graph)
    assert not cycles, "\n" + cycle_report(cycles)


def test_only_the_command_line_imports_the_command_line(graph) -> None:
    bad = cli_imports(graph[1])
    assert not bad, "library modules import the CLI:\n" + "\n".join(map(str, bad))


def test_every_module_has_a_layer_and_imports_only_from_below(graph) -> None:
    modules, imports = graph
    homeless = sorted(m for m in modules if layer_of(m) is None)
    assert not homeless, f"modules in no layer (add them to LAYERS here and to the README): {homeless}"
    problems = upward_imports(imports)
    assert not problems, "\n" + "\n".join(problems)


# --------------------------------------------------------------------------- the checks can fail
def test_the_checks_flag_cycles_cli_imports_and_upward_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "btnet_adapters"
    (pkg / "train").mkdir(parents=True)
    files = {
        "__init__.py": "from . import model\nfrom ._version import __version__\n",
        "_version.py": "__version__ = '0'\n",
        "errors.py": "",
        "cli.py": "from .model import Net\nCOMMAND_MODULES = ('btnet_adapters.train.cli',)\n",
        "hub.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .model import Net\n"
                   "def load():\n    from .model import Net\n    return Net\n"),
        "model.py": "from .hub import load\nclass Net: ...\n",
        "effective.py": "def calibrate():\n    from .cli import faces\n",
        "train/__init__.py": "",
        "train/cli.py": "from ..cli import main\n",
        "train/loop.py": "from .. import errors\nfrom ..errors import x\nimport btnet_adapters.hub\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    modules, imports = import_graph(pkg)
    edges = {(i.source, i.target): i.where for i in imports}
    assert edges[("btnet_adapters.hub", "btnet_adapters.model")] == "btnet_adapters/hub.py:5"  # not line 3
    assert ("btnet_adapters.train.loop", "btnet_adapters.errors") in edges
    assert ("btnet_adapters.train.loop", "btnet_adapters.train") not in edges
    assert ("btnet_adapters", "btnet_adapters._version") in edges
    report = cycle_report(find_cycles(modules, imports))
    assert "btnet_adapters.hub -> btnet_adapters.model (btnet_adapters/hub.py:5) -> " \
           "btnet_adapters.hub (btnet_adapters/model.py:1)" in report
    assert "btnet_adapters.cli -> btnet_adapters.train.cli (btnet_adapters/cli.py:2) -> " \
           "btnet_adapters.cli (btnet_adapters/train/cli.py:1)" in report
    assert [str(i) for i in cli_imports(imports)] == [
        "btnet_adapters.effective -> btnet_adapters.cli (btnet_adapters/effective.py:2)"]
    assert upward_imports(imports) == [
        "btnet_adapters.effective -> btnet_adapters.cli (btnet_adapters/effective.py:2): layer "
        "'pixels and routing' imports from the higher layer 'command line'",
        "btnet_adapters.hub -> btnet_adapters.model (btnet_adapters/hub.py:5): layer 'artifacts' imports "
        "from the higher layer 'model'",
    ]
