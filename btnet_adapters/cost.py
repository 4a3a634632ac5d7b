"""Cost of each path of a BTNet: FLOPs, parameters, stored bytes and latency.

A BTNet has one path per input side: the trunk at ``input_size`` and one branch per branch
resolution ``r``. :func:`measure_costs` measures, for every path,

* **FLOPs per image** of the whole path (branch/trunk and embedding head), counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on a batch of one. The counter follows
  the convention of torch (and of most papers since): one multiply-add is **2 FLOPs**, and
  only matrix products and convolutions are counted (norms, activations and pooling are not);
  :attr:`PathCost.macs` gives multiply-adds, the "FLOPs" of insightface's tables;
* **parameters used**: elements of the distinct ``nn.Parameter`` tensors the path reads;
* **stored per resolution**: the tensors, elements and bytes of ``model.branch_state_dict(r)``
  (the adapter), against the full model (``model.trunk_state_dict()``: trunk + head);
* **latency** (optional): the median wall time of ``model(x)`` per batch after warm-up, in
  ``torch.inference_mode`` and eval mode, with a given number of threads. All paths are timed
  round-robin in one loop, so their ratios see the same machine load.

:func:`render_table` prints a :class:`CostReport` as a Markdown or plain-text table and
:func:`plot_costs` draws FLOPs and stored parameters per path (the paper's Fig. 4/5).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode
from .progress import progress_bar

from ._atomic import atomic_path
from .errors import ConfigError

TABLE_FORMATS = ("markdown", "plain")
PLOT_FORMATS = ("png", "pdf", "svg")


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class PathCost:
    """The cost of one path (the trunk, or the branch of one resolution).

    Attributes:
        resolution: input side of the path.
        is_trunk: the trunk path (input side ``input_size``).
        flops: FLOPs per image of the whole path, head included (2 per multiply-add).
        params_used: elements of the distinct parameters the path reads.
        stored_params: elements of the parameters stored for this resolution (the branch's
            trainable tensors; the trunk + head parameters for the trunk).
        stored_numel: elements of every stored tensor (parameters and norm statistics).
        stored_tensors: number of stored tensors.
        stored_bytes: bytes of the stored tensors.
        latency_ms: batch size → median milliseconds per batch (empty when not measured).
    """

    resolution: int
    is_trunk: bool
    flops: int
    params_used: int
    stored_params: int
    stored_numel: int
    stored_tensors: int
    stored_bytes: int
    latency_ms: dict[int, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``"trunk"`` or ``"branch 7"``."""
        return "trunk" if self.is_trunk else f"branch {self.resolution}"

    @property
    def macs(self) -> int:
        """Multiply-adds per image (``flops // 2``)."""
        return self.flops // 2


@dataclass(frozen=True)
class CostReport:
    """Costs of every path of one model, with the settings they were measured under.

    Attributes:
        model: the backbone architecture (``model.config()["backbone"]``).
        input_size: the trunk's input side.
        paths: one entry per path, branches by resolution, the trunk last.
        full_params: parameter elements of the full model (trunk + embedding head).
        full_numel: elements of every tensor of the full model.
        full_bytes: bytes of the full model's tensors.
        batch_sizes: batch sizes timed (empty when latency was not measured).
        repeats: timed runs per path and batch size.
        warmup: untimed runs per path and batch size before timing.
        threads: torch intra-op threads used for timing.
        device: device the model ran on.
        torch_version: ``torch.__version__``.
        machine: processor description.
    """

    model: str
    input_size: int
    paths: tuple[PathCost, ...]
    full_params: int
    full_numel: int
    full_bytes: int
    batch_sizes: tuple[int, ...]
    repeats: int
    warmup: int
    threads: int
    device: str
    torch_version: str
    machine: str

    @property
    def trunk(self) -> PathCost:
        """The trunk's path."""
        return next(p for p in self.paths if p.is_trunk)

    def path(self, resolution: int) -> PathCost:
        """The path of input side ``resolution``."""
        for p in self.paths:
            if p.resolution == resolution:
                return p
        raise ConfigError(f"no path for resolution {resolution}; paths: {[p.resolution for p in self.paths]}")

    def flop_ratio(self, path: PathCost) -> float:
        """``path.flops / trunk.flops``."""
        return path.flops / self.trunk.flops

    def flop_speedup(self, path: PathCost) -> float:
        """``trunk.flops / path.flops``: the speedup the FLOP count promises."""
        return self.trunk.flops / path.flops

    def speedup(self, path: PathCost, batch_size: int) -> float:
        """Realised speedup ``trunk time / path time`` at ``batch_size``."""
        if batch_size not in path.latency_ms:
            raise ConfigError(f"batch size {batch_size} was not timed; timed: {list(self.batch_sizes)}")
        return self.trunk.latency_ms[batch_size] / path.latency_ms[batch_size]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (latency keys become strings)."""
        out = asdict(self)
        for p in out["paths"]:
            p["latency_ms"] = {str(b): ms for b, ms in p["latency_ms"].items()}
        return out


# ----------------------------------------------------------------------------- counting
class _ParameterRecorder(TorchFunctionMode):
    """Records every ``nn.Parameter`` passed to a torch function."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, nn.Parameter] = {}

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for leaf in _leaves((args, kwargs)):
            if isinstance(leaf, nn.Parameter):
                self.seen[id(leaf)] = leaf
        return func(*args, **kwargs)


def _leaves(obj: Any) -> Iterator[Any]:
    if isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _leaves(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _leaves(item)
    else:
        yield obj


def count_flops(fn: Callable[..., Any], *args: Any) -> int:
    """FLOPs of one call ``fn(*args)`` (torch convention: 2 per multiply-add).

    Runs under ``torch.inference_mode``; only matrix products and convolutions count.
    """
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn(*args)
    return int(counter.get_total_flops())


def count_parameters_used(fn: Callable[..., Any], *args: Any) -> int:
    """Elements of the distinct ``nn.Parameter`` tensors that one call ``fn(*args)`` reads."""
    recorder = _ParameterRecorder()
    with torch.inference_mode(), recorder:
        fn(*args)
    return sum(p.numel() for p in recorder.seen.values())


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """``(elements, bytes)`` of a state dict's tensors."""
    numel = sum(t.numel() for t in tensors.values())
    return numel, sum(t.numel() * t.element_size() for t in tensors.values())


# ----------------------------------------------------------------------------- timing
@contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block (``None``: leave it), then restore it."""
    if threads is None:
        yield
        return
    if int(threads) < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_calls(
    calls: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    progress: bool = False,
    desc: str = "timing",
) -> dict[str, list[float]]:
    """Wall times (seconds) of ``repeats`` runs of each call, interleaved round-robin.

    Every call first runs ``warmup`` times untimed. Each timed round runs every call once,
    the starting call rotating from round to round, so all calls see the same machine load
    and no call always follows the same other call.
    """
    _check_count("repeats", repeats, 1)
    _check_count("warmup", warmup, 0)
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in progress_bar(range(repeats), desc=desc, unit="round", disable=not progress, leave=False):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(times: Sequence[float]) -> float:
    """Median of wall times in seconds, in milliseconds."""
    return statistics.median(times) * 1e3


# ----------------------------------------------------------------------------- measuring
@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _inputs(side: int, batch_size: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(side * 1000 + batch_size)
    return torch.randn(batch_size, 3, side, side, generator=gen).to(device)


def _synchronised(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    if device.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return run


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def measure_latency(
    model: nn.Module,
    batch_sizes: Sequence[int] = (1,),
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = 1,
    progress: bool = False,
) -> dict[int, dict[int, float]]:
    """Median latency of ``model(x)`` for every path of a BTNet.

    Args:
        model: a :class:`~btnet_adapters.BTNet`.
        batch_sizes: batch sizes to time.
        repeats: timed runs per path and batch size (the median is reported).
        warmup: untimed runs per path and batch size first.
        threads: torch intra-op threads during timing (``None``: the current setting).
        progress: show a tqdm bar per batch size.

    Returns:
        ``{resolution: {batch_size: median milliseconds per batch}}``.
    """
    _check_model(model)
    sizes = _check_batch_sizes(batch_sizes)
    device = _device(model)
    out: dict[int, dict[int, float]] = {r: {} for r in model.resolutions}
    with _eval_mode(model), torch.inference_mode(), num_threads(threads):
        for b in sizes:
            calls = {
                r: _synchronised(lambda x=_inputs(r, b, device): model(x), device)
                for r in model.resolutions
            }
            times = time_calls(calls, repeats, warmup, progress, desc=f"latency batch {b}")
            for r, ts in times.items():
                out[r][b] = median_ms(ts)
    return out


def measure_costs(
    model: nn.Module,
    latency: bool = True,
    batch_sizes: Sequence[int] = (1,),
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = 1,
    progress: bool = False,
) -> CostReport:
    """FLOPs, parameters, stored tensors and (optionally) latency of every path of a BTNet.

    For a quick look (``btnet inspect``) use ``repeats=3, warmup=1`` at batch size 1; the
    ratios are then rough. Timing uses eval mode and ``torch.inference_mode``; the model's
    train/eval flags are restored afterwards.

    Args:
        model: a :class:`~btnet_adapters.BTNet`.
        latency: time the paths (otherwise only FLOPs and parameters, which take a second).
        batch_sizes: batch sizes to time.
        repeats: timed runs per path and batch size (the median is reported).
        warmup: untimed runs per path and batch size first.
        threads: torch intra-op threads during timing (``None``: the current setting).
        progress: show tqdm bars while timing.

    Returns:
        A :class:`CostReport` with the branches by resolution and the trunk last.
    """
    _check_model(model)
    sizes = _check_batch_sizes(batch_sizes) if latency else ()
    timings = measure_latency(model, sizes, repeats, warmup, threads, progress) if latency else {}
    device = _device(model)
    full = model.trunk_state_dict()
    full_numel, full_bytes = tensor_bytes(full)
    full_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("trunk.", "head.")))
    paths = []
    with _eval_mode(model):
        for r in model.resolutions:
            x = _inputs(r, 1, device)
            is_trunk = r == model.input_size
            stored = full if is_trunk else model.branch_state_dict(r)
            numel, nbytes = tensor_bytes(stored)
            paths.append(PathCost(
                resolution=r,
                is_trunk=is_trunk,
                flops=count_flops(model, x),
                params_used=count_parameters_used(model, x),
                stored_params=full_params if is_trunk else sum(p.numel() for p in model.branch_parameters(r)),
                stored_numel=numel,
                stored_tensors=len(stored),
                stored_bytes=nbytes,
                latency_ms=timings.get(r, {}),
            ))
    return CostReport(
        model=str(model.config().get("backbone")),
        input_size=model.input_size,
        paths=tuple(paths),
        full_params=full_params,
        full_numel=full_numel,
        full_bytes=full_bytes,
        batch_sizes=sizes,
        repeats=repeats if latency else 0,
        warmup=warmup if latency else 0,
        threads=torch.get_num_threads() if threads is None else int(threads),
        device=str(device),
        torch_version=torch.__version__,
        machine=platform.processor() or platform.machine(),
    )


def _check_model(model: Any) -> None:
    from .model import BTNet

    if not isinstance(model, BTNet):
        raise ConfigError(f"cost measurement takes a BTNet, got {type(model).__name__}")


def _check_batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(batch_sizes)
    if not sizes:
        raise ConfigError("batch_sizes is empty; give at least one batch size, e.g. (1,)")
    for b in sizes:
        _check_count("batch size", b, 1)
    return tuple(dict.fromkeys(sizes))


# ----------------------------------------------------------------------------- rendering
def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], fmt: str = "markdown") -> str:
    """A Markdown (``|``-separated, numbers right-aligned) or plain (space-aligned) table.

    Columns whose cells all start with a digit, sign or ``.`` are right-aligned.
    """
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"unknown table format {fmt!r}; accepted: {TABLE_FORMATS}")
    if any(len(r) != len(headers) for r in rows):
        raise ConfigError(f"every row needs {len(headers)} cells")
    numeric = [bool(rows) and all(r[i][:1] in "0123456789-+." and r[i] for r in rows) for i in range(len(headers))]
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _num(x: float) -> str:
    return f"{x:.4g}"


def render_table(report: CostReport, fmt: str = "markdown") -> str:
    """The paths of a :class:`CostReport` as a table, one row per path.

    Columns: GFLOPs per image and % of the trunk's; parameters used; stored parameters,
    MB and % of the full model's bytes; per timed batch size the median milliseconds per
    batch and the realised speedup over the trunk.
    """
    headers = ["path", "input", "GFLOPs", "FLOPs vs trunk", "params used (M)",
               "stored params (M)", "stored MB", "stored vs full"]
    for b in report.batch_sizes:
        headers += [f"ms (batch {b})", f"speedup (batch {b})"]
    rows = []
    for p in report.paths:
        row = [p.name, f"{p.resolution}×{p.resolution}", _num(p.flops / 1e9),
               f"{100 * report.flop_ratio(p):.1f} %", _num(p.params_used / 1e6), _num(p.stored_params / 1e6),
               _num(p.stored_bytes / 2**20), f"{100 * p.stored_bytes / report.full_bytes:.1f} %"]
        for b in report.batch_sizes:
            row += [f"{p.latency_ms[b]:.2f}", f"{report.speedup(p, b):.2f}×"]
        rows.append(row)
    return format_table(headers, rows, fmt)


def describe_settings(report: CostReport) -> str:
    """One line with the measurement settings (torch version, threads, repeats, device)."""
    timing = (f"latency: median of {report.repeats} runs after {report.warmup} warm-up, "
              f"{report.threads} thread(s), batch sizes {list(report.batch_sizes)}"
              if report.batch_sizes else "latency not measured")
    return (f"{report.model} at {report.input_size}: torch {report.torch_version}, {report.device} "
            f"({report.machine}); {timing}; FLOPs per image, 2 per multiply-add")


# ----------------------------------------------------------------------------- plotting
def plot_costs(report: CostReport, path: str | os.PathLike, title: str | None = None) -> Path:
    """Bar plots of FLOPs and stored parameters per path (the paper's Fig. 4/5), saved atomically.

    Args:
        report: what :func:`measure_costs` returned.
        path: output file; its suffix picks the format (``.png``, ``.pdf`` or ``.svg``).
        title: figure title (default: the model name).

    Returns:
        The written path.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise ConfigError(f"plot file {path.name!r} has an unsupported suffix; accepted: {PLOT_FORMATS}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [f"{p.resolution}" + (" (trunk)" if p.is_trunk else "") for p in report.paths]
    colors = ["#4c72b0" if not p.is_trunk else "#8c8c8c" for p in report.paths]
    fig = Figure(figsize=(9, 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    panels = [
        ("GFLOPs per image", [p.flops / 1e9 for p in report.paths], [report.flop_ratio(p) for p in report.paths]),
        ("stored parameters (M)", [p.stored_params / 1e6 for p in report.paths],
         [p.stored_params / report.full_params for p in report.paths]),
    ]
    for ax, (ylabel, values, ratios) in zip(fig.subplots(1, 2), panels):
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, labels=[f"{100 * q:.1f} %" for q in ratios], fontsize=8, padding=2)
        ax.set_xlabel("input resolution (path)")
        ax.set_ylabel(ylabel)
        ax.margins(y=0.15)
    fig.suptitle(title or f"BTNet {report.model}: cost per path")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return path
