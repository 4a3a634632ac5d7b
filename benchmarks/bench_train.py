"""Benchmark: training throughput of the BTNet branch step against plain timm steps.

In one run, timed round-robin (so every row sees the same machine load), images per second of:

1. **plain timm, branch path** — a deep copy of branch ``r``'s path (an ordinary timm module
   taking ``r``-px images), margin
   loss, every parameter trained: what training that network without BTNet costs;
2. **BTNet student** — the same computation through ``BTNet.forward_with_implant`` (the
   branch's fixed path over the shared trunk), margin loss on the frozen classifier, only the branch's tensors
   trained;
3. **BTNet branch step** — the full recipe as :class:`btnet_adapters.train.branch.BranchTask`
   runs it: teacher (trunk on the 112 image, eval, no grad) + student + margin loss +
   λ·(feature MSE + embedding MSE), gradient clipping, SGD step;
4. **plain timm, trunk at 112** — a trunk training step, for scale.

Usage::

    python benchmarks/bench_train.py --model btnet_mobilefacenet --resolution 14 --batch-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import btnet_adapters  # noqa: F401 - registers the btnet_* models
from btnet_adapters.model import BTNet
from btnet_adapters.train import BranchConfig
from btnet_adapters.train.branch import BranchTask
from btnet_adapters.train.distributed import DistEnv
from btnet_adapters.train.partial_fc import ShardedMarginHead

MODEL_KWARGS = {"btnet_mobilefacenet": {"embed_dim": 128, "backbone_kwargs": {"num_features": 128, "scale": 1}}}


def baked_branch(model: BTNet, resolution: int) -> nn.Module:
    """A deep copy of branch ``resolution``'s path: an ordinary module taking ``r``-px images."""
    return copy.deepcopy(model.path(resolution))


def sgd_step(params: list[nn.Parameter], loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One training step: zero grads, loss, backward, clip to 5, SGD (momentum 0.9, wd 5e-4)."""
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()

    return step


def build_steps(model_name: str, resolution: int, batch: int, classes: int, device: torch.device
                ) -> dict[str, Callable[[], None]]:
    """The four training steps, each a closure over its own model copy and random batch."""
    kwargs = MODEL_KWARGS.get(model_name, {})
    model = timm.create_model(model_name, resolutions=[resolution], num_classes=classes, **kwargs).to(device)
    labels = torch.randint(0, classes, (batch,), device=device)
    x_hi = torch.randn(batch, 3, model.input_size, model.input_size, device=device)
    x_lo = torch.randn(batch, 3, resolution, resolution, device=device)
    steps: dict[str, Callable[[], None]] = {}

    plain = baked_branch(model, resolution).train()
    plain_head = copy.deepcopy(model.classifier)
    steps["plain timm, branch path (all params)"] = sgd_step(
        list(plain.trunk.parameters()) + list(plain.head.parameters() if plain.head else []) + list(plain_head.parameters()),
        lambda: F.cross_entropy(plain_head(plain(x_lo), labels), labels))

    student = copy.deepcopy(model)
    classifier, student.classifier = student.classifier, None
    head = ShardedMarginHead(classifier, DistEnv(device=device)).to(device).eval().requires_grad_(False)
    student.requires_grad_(False)
    params = list(student.branch_parameters(resolution))
    for p in params:
        p.requires_grad_(True)
    steps["BTNet student (branch params)"] = sgd_step(
        params, lambda: head(student.train().forward_with_implant(x_lo, resolution)[0], labels))

    full = copy.deepcopy(model)
    classifier, full.classifier = full.classifier, None
    task = BranchTask(full, resolution, ShardedMarginHead(classifier, DistEnv(device=device)).to(device),
                      DistEnv(device=device), BranchConfig(data="-", out="-", trunk="-", resolution=resolution))
    steps["BTNet branch step (teacher + student + distillation)"] = sgd_step(
        [p for _, p in task.named_parameters()], lambda: task.losses([x_hi, x_lo, labels], 0)["loss"])

    trunk = copy.deepcopy(model).train()
    trunk_head = trunk.classifier
    steps[f"plain timm, trunk at {model.input_size} (all params)"] = sgd_step(
        list(trunk.parameters()), lambda: F.cross_entropy(trunk_head(trunk.forward_trunk(x_hi), labels), labels))
    return steps


def measure(steps: dict[str, Callable[[], None]], batch: int, repeats: int, warmup: int,
            device: torch.device) -> dict[str, float]:
    """Median images/s of each step, timed round-robin."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def table(rates: dict[str, float]) -> str:
    """Markdown table: images/s and the ratio to the first row."""
    base = next(iter(rates.values()))
    width = max(len(n) for n in rates)
    lines = [f"| {'step'.ljust(width)} | images/s | vs plain branch path |",
             f"|{'-' * (width + 2)}|---------:|---------------------:|"]
    lines += [f"| {name.ljust(width)} | {rate:8.1f} | {rate / base:19.2f}× |" for name, rate in rates.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="btnet_mobilefacenet", help="a btnet_* zoo model")
    parser.add_argument("--resolution", type=int, default=14)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=1000, help="identities of the margin head")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    steps = build_steps(args.model, args.resolution, args.batch_size, args.classes, device)
    rates = measure(steps, args.batch_size, args.repeats, args.warmup, device)
    print(f"{args.model}, branch {args.resolution} px, batch {args.batch_size}, {device}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    print(table(rates))
    if args.json:
        print(json.dumps({"model": args.model, "resolution": args.resolution, "batch": args.batch_size,
                          "device": str(device), "images_per_s": rates}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
