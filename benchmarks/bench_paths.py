"""Benchmark: is a branch really cheaper than up-sampling to 112 and running the trunk?

For each model, in one run (all paths timed round-robin, so ratios see the same load):

1. **Paths.** FLOPs per image and CPU latency of the trunk at 112 (the up-sampling practice:
   a low-resolution face is up-sampled to 112 and run through the trunk) and of each branch
   path. The realised speedup (trunk time / branch time) is compared with the FLOP speedup
   (trunk FLOPs / branch FLOPs); target: realised ≥ 0.8 × FLOP speedup.
2. **Overhead at 112.** ``BTNet(x112)`` against the same computation without BTNet: a plain
   module running ``trunk.forward_features`` + head on BTNet's own modules, and the backbone
   built by ``timm.create_model`` (same weights, same head) run directly; target ≤ 3 %.
3. **Swap overhead** (``--swap-models``, batch 1). A branch forward puts the branch's modules
   and stride-free views into the shared tree for the call and back (resolved once per branch,
   ``BTNet._resolved_swaps``). This times what resolving the swaps on every call would cost
   (``surgery.swapped``), and the branch forward against plain assignment of the resolved swaps
   and a deep copy with the swaps applied for good (see :func:`swap_rows`).

Usage::

    python benchmarks/bench_paths.py --threads 1 --repeats 5 --batch-sizes 1 64
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

import btnet_adapters  # noqa: F401 - registers the btnet_* models
from btnet_adapters import BTNet, surgery
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


# --------------------------------------------------------------------------- 3. swaps
def _resolve(model: BTNet, swaps: Sequence[tuple[str, Callable]]) -> list[tuple[nn.Module, str, nn.Module]]:
    out = []
    for path, make in swaps:
        parent_path, _, key = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        out.append((parent, key, make(parent._modules[key])))
    return out


def _assign(resolved: Sequence[tuple[nn.Module, str, nn.Module]]) -> list[tuple[nn.Module, str, nn.Module]]:
    undo = [(parent, key, parent._modules[key]) for parent, key, _ in resolved]
    for parent, key, module in resolved:
        parent._modules[key] = module
    return undo


def _branch_swaps(model: BTNet, r: int) -> tuple[list, list]:
    """``(overrides, stride-free views)``: the swaps ``BTNet`` makes for a branch-``r`` call."""
    plan = model.branches[str(r)].plan
    return (model.branches[str(r)].override_swaps(),
            [(p, lambda old, k=k: surgery.stride_free(old, k)) for p, k in plan.downsampling])


def _resolve_branch(model: BTNet, r: int) -> list[tuple[nn.Module, str, nn.Module]]:
    """Overrides and stride-free views of branch ``r`` as ``(parent, key, module)`` assignments."""
    overrides, strides = _branch_swaps(model, r)
    with surgery.swapped(model, overrides):  # stride views live inside the branch's copies
        return _resolve(model, overrides) + _resolve(model, strides)


def swap_rows(name: str, model: BTNet, repeats: int, warmup: int, progress: bool) -> list[list[str]]:
    """Per branch at batch 1: the branch forward, its swaps alone, and two leaner variants.

    * swaps: resolving, entering and leaving the swaps of one branch forward per call
      (``surgery.swapped``), running nothing: what BTNet would pay without its cache;
    * resolved: the swaps resolved once and applied as plain ``parent._modules[key] = m``;
    * materialised: a deep copy with the swaps applied for good (the floor for any swapping).
    """
    rows = []
    for r in model.branch_resolutions:
        x = torch.randn(1, 3, r, r)
        overrides, strides = _branch_swaps(model, r)
        resolved = _resolve_branch(model, r)
        materialised = copy.deepcopy(model)
        _assign(_resolve_branch(materialised, r))

        def swaps_only() -> None:
            with surgery.swapped(model, overrides + strides):
                pass

        def resolved_pass() -> torch.Tensor:
            undo = _assign(resolved)
            try:
                return model.forward_trunk(x)
            finally:
                _assign(undo[::-1])

        calls = {"now": lambda: model(x), "swaps": swaps_only, "resolved": resolved_pass,
                 "materialised": lambda: materialised.forward_trunk(x)}
        with torch.inference_mode():
            for key in ("resolved", "materialised"):
                torch.testing.assert_close(calls[key](), model(x), rtol=1e-4, atol=1e-4)
            times = time_calls(calls, repeats, warmup, progress, desc=f"{name} swaps {r}")
        ms = {k: median_ms(v) for k, v in times.items()}
        rows.append([name, str(r), str(len(overrides) + len(strides)), f"{ms['now']:.3f}",
                     f"{1e3 * ms['swaps']:.0f} ({100 * ms['swaps'] / ms['now']:.1f} %)",
                     f"{ms['resolved']:.3f}", f"{ms['materialised']:.3f}",
                     f"{100 * (ms['now'] / ms['materialised'] - 1):+.1f} %"])
    return rows


SWAP_HEADERS = ["model", "branch", "swaps/call", "forward ms", "swaps µs (share)",
                "resolved swaps ms", "materialised ms", "forward vs materialised"]


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
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="registered btnet_* models")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per path and batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="batch sizes for the paths")
    parser.add_argument("--overhead-batch-sizes", type=int, nargs="*", default=[1],
                        help="batch sizes for the overhead at 112 (none: skip)")
    parser.add_argument("--overhead-repeats", type=int, default=50, help="timed runs per variant for the overhead")
    parser.add_argument("--swap-models", nargs="*", default=["btnet_mobilefacenet"],
                        help="models whose swap overhead is timed at batch 1 (none: skip)")
    parser.add_argument("--swap-repeats", type=int, default=200, help="timed runs per branch for the swaps")
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
    unknown = [m for m in {*args.models, *args.swap_models} if m not in timm.list_models("btnet_*")]
    if unknown:
        sys.exit(f"unknown models {unknown}; registered: {timm.list_models('btnet_*')}")
    env = environment(args)
    print(env, flush=True)
    paths, overheads, swaps, reports = [], [], [], {}
    with num_threads(args.threads):
        for name in args.models:
            model = build(name)
            report = measure_costs(model, batch_sizes=args.batch_sizes, repeats=args.repeats,
                                   warmup=args.warmup, threads=args.threads, progress=progress)
            reports[name] = report.to_dict()
            paths += path_rows(name, report)
            if args.overhead_batch_sizes:
                overheads += overhead_rows(name, model, args.overhead_batch_sizes, args.overhead_repeats,
                                           args.warmup, progress)
            if name in args.swap_models:
                swaps += swap_rows(name, model, args.swap_repeats, SWAP_WARMUP, progress)
        for name in args.swap_models:
            if name not in args.models:
                swaps += swap_rows(name, build(name), args.swap_repeats, SWAP_WARMUP, progress)
    print(f"\n## Paths: trunk at 112 vs branches (target: realised/FLOP ≥ {EFFICIENCY_TARGET})\n")
    print(format_table(path_headers(args.batch_sizes), paths, args.format))
    if overheads:
        print(f"\n## BTNet at 112 vs the same network without BTNet (target ≤ {100 * OVERHEAD_TARGET:.0f} %)\n")
        print(format_table(OVERHEAD_HEADERS, overheads, args.format))
    if swaps:
        print("\n## Module swapping per branch forward, batch 1\n")
        print(format_table(SWAP_HEADERS, swaps, args.format))
    if args.json:
        _write_json(args.json, dict(environment=env, reports=reports,
                                    overhead=[dict(zip(OVERHEAD_HEADERS, r)) for r in overheads],
                                    swaps=[dict(zip(SWAP_HEADERS, r)) for r in swaps]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
