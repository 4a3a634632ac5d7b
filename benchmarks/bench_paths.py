"""Benchmark: is a branch really cheaper than up-sampling to 112 and running the trunk?

For each model, in one run (all paths timed round-robin, so ratios see the same load):

1. **Paths.** FLOPs per image and CPU latency of the trunk at 112 (the up-sampling practice:
   a low-resolution face is up-sampled to 112 and run through the trunk) and of each branch
   path. The realised speedup (trunk time / branch time) is compared with the FLOP speedup
   (trunk FLOPs / branch FLOPs); target: realised ≥ 0.8 × FLOP speedup.
2. **Overhead at 112.** ``BTNet(x112)`` against the same computation without BTNet: a plain
   module running ``trunk.forward_features`` + head on BTNet's own modules, and the backbone
   built by ``timm.create_model`` (same weights, same head) run directly; target ≤ 3 %.
3. **Fixed paths vs swapping** (``--mechanism-models``). A branch call runs a fixed view of the
   trunk built when the branch was added (:mod:`btnet_adapters.paths`); the previous mechanism
   put the branch's modules into the shared tree for each call and back
   (:class:`SwappingForward`, reproduced here as the baseline). Same run, same inputs, equal
   outputs asserted; target: no path slower.
4. **Threads** (``--caller-threads``): throughput of N Python threads calling one model with
   mixed resolutions against one thread making the same calls (outputs checked bit for bit).

Usage::

    python benchmarks/bench_paths.py --threads 1 --repeats 5 --batch-sizes 1 64
    python benchmarks/bench_paths.py --models --threads 1 --repeats 20   # sections 3 and 4 only
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

import btnet_adapters  # noqa: F401 - registers the btnet_* models
from btnet_adapters import BTNet
from btnet_adapters.cost import (
    CostReport,
    format_table,
    measure_costs,
    median_ms,
    num_threads,
    time_calls,
)

MODELS = ("btnet_iresnet50", "btnet_resnet50", "btnet_mobilefacenet")
#: Extra arguments per model: MobileFaceNet as insightface released it (128-d, scale 1).
MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "btnet_mobilefacenet": dict(embed_dim=128, backbone_kwargs=dict(num_features=128, scale=1)),
}
EFFICIENCY_TARGET = 0.8
OVERHEAD_TARGET = 0.03
SWAP_WARMUP = 20  # batch-1 calls are cheap; fewer warm-ups leave allocator/cache effects in the numbers


def build(name: str) -> BTNet:
    """A registered BTNet in eval mode, with the benchmark's arguments for it."""
    return timm.create_model(name, **MODEL_KWARGS.get(name, {})).eval()


class Direct(nn.Module):
    """``trunk.forward_features`` then the head (or the trunk's own ``forward_head``)."""

    def __init__(self, trunk: nn.Module, head: nn.Module | None) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk.forward_features(x)
        return self.trunk.forward_head(f) if self.head is None else self.head(f)


def bare_timm(model: BTNet) -> Direct:
    """The model's backbone built by timm with the same edits, weights and head."""
    cfg = model.config()
    kwargs = dict(cfg["backbone_kwargs"])
    if cfg["head"] != "backbone":
        kwargs["num_classes"] = 0
    net = timm.create_model(cfg["backbone"], **kwargs)
    for path in cfg["remove"]:
        parent, _, name = path.rpartition(".")
        (net.get_submodule(parent) if parent else net)._modules[name] = nn.Identity()
    net.load_state_dict(model.trunk.state_dict())
    return Direct(net, copy.deepcopy(model.head)).eval()


# --------------------------------------------------------------------------- 1. paths
def path_rows(name: str, report: CostReport) -> list[list[str]]:
    """One row per path: FLOPs, FLOP speedup, and per batch size ms / speedup / efficiency."""
    rows = []
    for p in report.paths:
        row = [name, p.name, f"{p.flops / 1e9:.3f}", f"{report.flop_speedup(p):.2f}×"]
        for b in report.batch_sizes:
            realised = report.speedup(p, b)
            eff = realised / report.flop_speedup(p)
            ok = "" if p.is_trunk else (" ok" if eff >= EFFICIENCY_TARGET else " LOW")
            row += [f"{p.latency_ms[b]:.2f}", f"{realised:.2f}×", f"{eff:.2f}{ok}"]
        rows.append(row)
    return rows


def path_headers(batch_sizes: Sequence[int]) -> list[str]:
    headers = ["model", "path", "GFLOPs/img", "FLOP speedup"]
    for b in batch_sizes:
        headers += [f"ms b{b}", f"speedup b{b}", f"realised/FLOP b{b}"]
    return headers


# --------------------------------------------------------------------------- 2. overhead
def overhead_rows(name: str, model: BTNet, batch_sizes: Sequence[int], repeats: int, warmup: int,
                  progress: bool) -> list[list[str]]:
    """BTNet at 112 against a plain module on its own modules and against timm directly."""
    plain = Direct(model.trunk, model.head).eval()
    bare = bare_timm(model)
    rows = []
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.randn(b, 3, model.input_size, model.input_size)
            torch.testing.assert_close(model(x), bare(x), rtol=1e-4, atol=1e-4)
            times = time_calls({"btnet": lambda: model(x), "trunk": lambda: model.forward_trunk(x),
                                "plain": lambda: plain(x), "timm": lambda: bare(x)},
                               repeats, warmup, progress, desc=f"{name} overhead b{b}")
            ms = {k: median_ms(v) for k, v in times.items()}
            over = ms["btnet"] / ms["timm"] - 1
            rows.append([name, str(b), f"{ms['btnet']:.2f}", f"{ms['trunk']:.2f}", f"{ms['plain']:.2f}",
                         f"{ms['timm']:.2f}", f"{100 * (ms['btnet'] / ms['plain'] - 1):+.1f} %",
                         f"{100 * over:+.1f} %" + (" ok" if over <= OVERHEAD_TARGET else " HIGH")])
    return rows


OVERHEAD_HEADERS = ["model", "batch", "BTNet(x) ms", "forward_trunk ms", "plain ms", "timm ms",
                    "vs plain", "vs timm"]


# --------------------------------------------------------------------------- 3. fixed paths vs swapping
class SwappingForward:
    """The previous mechanism (main at 3a5503d), kept here as the baseline: a branch call puts
    the branch's modules and stride-free views into the *shared* tree for the call and puts the
    trunk's back afterwards (resolved once per branch, checked by identity on every call). Not
    safe with overlapping calls — the reason it was replaced."""

    def __init__(self, model: BTNet, resolution: int) -> None:
        self.model = model
        self.branch = model.branches[str(resolution)]
        self.key = (self.branch, *self.branch.overrides.values())
        self.assignments: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
        try:  # resolve in order, a later path may lead through an earlier replacement
            for path, make in self.branch.replacements():
                parent_path, _, name = path.rpartition(".")
                parent = model.get_submodule(parent_path) if parent_path else model
                old = parent._modules[name]
                self.assignments.append((parent, name, old, make(old)))
                parent._modules[name] = self.assignments[-1][3]
        finally:
            for parent, name, old, _ in reversed(self.assignments):
                parent._modules[name] = old

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.model._check_input(x)  # as BTNet.forward did before the branch call
        key = (self.branch, *self.branch.overrides.values())
        if len(key) != len(self.key) or any(a is not b for a, b in zip(key, self.key)):
            raise RuntimeError("the branch changed since its swaps were resolved")
        undo = []
        try:
            for parent, name, old, new in self.assignments:
                if parent._modules.get(name) is not old:
                    raise RuntimeError(f"{name} changed since the swaps were resolved")
                parent._modules[name] = new
                undo.append((parent, name, old))
            return self.model.forward_trunk(x)
        finally:
            for parent, name, old in reversed(undo):
                parent._modules[name] = old


def mechanism_rows(name: str, model: BTNet, batch_sizes: Sequence[int], repeats: int, warmup: int,
                   progress: bool) -> list[list[str]]:
    """Per branch and batch size: ``model(x)`` on its fixed path vs the per-call swapping."""
    rows = []
    with torch.inference_mode():
        for r in model.branch_resolutions:
            swapping = SwappingForward(model, r)
            for b in batch_sizes:
                x = torch.randn(b, 3, r, r)
                assert torch.equal(swapping(x), model(x)), "the baseline must compute the same embeddings"
                times = time_calls({"paths": lambda: model(x), "swapping": lambda: swapping(x)},
                                   repeats if b > 1 else 10 * repeats, warmup if b > 1 else SWAP_WARMUP,
                                   progress, desc=f"{name} r{r} b{b}")
                ms = {k: median_ms(v) for k, v in times.items()}
                rows.append([name, str(r), str(b), str(len(swapping.assignments)), f"{ms['swapping']:.3f}",
                             f"{ms['paths']:.3f}", f"{ms['swapping'] / ms['paths']:.3f}×"])
    return rows


MECHANISM_HEADERS = ["model", "branch", "batch", "slots replaced", "swapping ms", "fixed path ms",
                     "speedup (swapping / path)"]


# --------------------------------------------------------------------------- 4. threads
def thread_rows(name: str, model: BTNet, threads: int, calls: int, batch: int, repeats: int) -> list[list[str]]:
    """Throughput of ``threads`` Python threads calling one model with mixed resolutions against
    one thread making the same calls (torch intra-op threads as set for the run); every output
    is checked against the serial result."""
    sides = list(model.resolutions)
    inputs = {r: torch.randn(batch, 3, r, r) for r in sides}
    with torch.inference_mode():
        want = {r: model(x) for r, x in inputs.items()}
    order = [sides[i % len(sides)] for i in range(calls)]

    def run(part: Sequence[int]) -> bool:
        with torch.inference_mode():
            return all(torch.equal(model(inputs[r]), want[r]) for r in part)

    def one() -> bool:
        return run(order)

    def many() -> bool:
        with ThreadPoolExecutor(threads) as pool:
            return all(pool.map(run, [order[i::threads] for i in range(threads)]))

    times = time_calls({"1 thread": one, f"{threads} threads": many}, repeats, 1, False, desc="threads")
    ms = {k: median_ms(v) for k, v in times.items()}
    assert one() and many(), "a threaded call differed from the serial result"
    n = calls * batch
    return [[name, k, str(calls), "mixed " + "/".join(map(str, sides)), f"{1e3 * n / v:.0f}",
             f"{ms['1 thread'] / v:.2f}×"] for k, v in ms.items()]


THREAD_HEADERS = ["model", "callers", "calls", "sides", "images/s", "vs 1 thread"]


# --------------------------------------------------------------------------- main
def environment(args: argparse.Namespace) -> str:
    """A line naming torch, threads, repeats and the machine."""
    return (f"{datetime.datetime.now().isoformat(timespec='seconds')} · torch {torch.__version__} · "
            f"timm {timm.__version__} · {args.threads} thread(s) (of {os.cpu_count()} CPUs) · "
            f"median of {args.repeats} runs after {args.warmup} warm-up, interleaved · "
            f"{platform.processor() or platform.machine()} · Python {platform.python_version()}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="registered btnet_* models")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per path and batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="batch sizes for the paths")
    parser.add_argument("--overhead-batch-sizes", type=int, nargs="*", default=[1],
                        help="batch sizes for the overhead at 112 (none: skip)")
    parser.add_argument("--overhead-repeats", type=int, default=50, help="timed runs per variant for the overhead")
    parser.add_argument("--mechanism-models", nargs="*", default=["btnet_mobilefacenet", "btnet_resnet50"],
                        help="models whose fixed paths are timed against per-call swapping (none: skip)")
    parser.add_argument("--mechanism-batch-sizes", type=int, nargs="+", default=[1, 64],
                        help="batch sizes for the fixed paths vs swapping")
    parser.add_argument("--caller-threads", type=int, default=4,
                        help="Python threads calling one model at once, mixed resolutions (0: skip)")
    parser.add_argument("--thread-calls", type=int, default=64, help="calls per thread-throughput run")
    parser.add_argument("--thread-batch", type=int, default=8, help="batch size of each such call")
    parser.add_argument("--format", choices=("markdown", "plain"), default="markdown")
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="hide tqdm bars")
    return parser.parse_args(argv)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = not args.no_progress
    unknown = [m for m in {*args.models, *args.mechanism_models} if m not in timm.list_models("btnet_*")]
    if unknown:
        sys.exit(f"unknown models {unknown}; registered: {timm.list_models('btnet_*')}")
    env = environment(args)
    print(env, flush=True)
    paths, overheads, mechanism, threads, reports = [], [], [], [], {}
    with num_threads(args.threads):
        for name in dict.fromkeys([*args.models, *args.mechanism_models]):
            model = build(name)
            if name in args.models:
                report = measure_costs(model, batch_sizes=args.batch_sizes, repeats=args.repeats,
                                       warmup=args.warmup, threads=args.threads, progress=progress)
                reports[name] = report.to_dict()
                paths += path_rows(name, report)
                if args.overhead_batch_sizes:
                    overheads += overhead_rows(name, model, args.overhead_batch_sizes, args.overhead_repeats,
                                               args.warmup, progress)
            if name in args.mechanism_models:
                mechanism += mechanism_rows(name, model, args.mechanism_batch_sizes, args.repeats, args.warmup,
                                            progress)
                if args.caller_threads:
                    threads += thread_rows(name, model, args.caller_threads, args.thread_calls, args.thread_batch,
                                           args.repeats)
    if paths:
        print(f"\n## Paths: trunk at 112 vs branches (target: realised/FLOP ≥ {EFFICIENCY_TARGET})\n")
        print(format_table(path_headers(args.batch_sizes), paths, args.format))
    if overheads:
        print(f"\n## BTNet at 112 vs the same network without BTNet (target ≤ {100 * OVERHEAD_TARGET:.0f} %)\n")
        print(format_table(OVERHEAD_HEADERS, overheads, args.format))
    if mechanism:
        print("\n## Branch calls: fixed paths vs per-call swapping into the shared tree (previous mechanism)\n")
        print(format_table(MECHANISM_HEADERS, mechanism, args.format))
    if threads:
        print(f"\n## One model, {args.caller_threads} threads × mixed resolutions vs 1 thread "
              f"(batch {args.thread_batch}, every output equal to the serial one)\n")
        print(format_table(THREAD_HEADERS, threads, args.format))
    if args.json:
        _write_json(args.json, dict(environment=env, reports=reports,
                                    overhead=[dict(zip(OVERHEAD_HEADERS, r)) for r in overheads],
                                    mechanism=[dict(zip(MECHANISM_HEADERS, r)) for r in mechanism],
                                    threads=[dict(zip(THREAD_HEADERS, r)) for r in threads]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
