"""The ``btnet`` command.

``btnet inspect MODEL`` prints the branch plan of any model (a ``btnet_*`` zoo name or any timm
backbone name) and routes the bundled ORL faces, down-scaled to assorted sizes, through
:meth:`BTNet.embed`. Other command groups live next to the code they drive and are registered
here through their module's ``register(subparsers)``.

This module is the top of the package: no other module of it imports this one. What command
groups and library code share with it lives below and is re-exported here: option types and
plain-text help in :mod:`btnet_adapters._parse`, :func:`~btnet_adapters.zoo.build_model` in the
zoo and :func:`~btnet_adapters.data.orl.orl_faces` with the bundled faces.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections import Counter
from collections.abc import Sequence

from ._parse import int_list, plain_help, plain_text, resize_arg  # noqa: F401 - also this module's API
from .data.orl import ORL_DIR, orl_faces  # noqa: F401 - also this module's API
from .zoo import build_model

#: Modules that add command groups (``register(subparsers)``).
COMMAND_MODULES: tuple[str, ...] = (
    "btnet_adapters.hub",
    "btnet_adapters.export",
    "btnet_adapters.checkpoints",
    "btnet_adapters.data.pack",
    "btnet_adapters.evaluate.cli",
    "btnet_adapters.analysis.cli",
    "btnet_adapters.effective",
    "btnet_adapters.train.cli",
    "btnet_adapters.reproduce.cli",
)

#: Widths the ORL faces (92×112) are scaled to by ``btnet inspect``, aspect ratio kept.
DEMO_WIDTHS = (6, 9, 12, 16, 22, 30, 46, 70, 92, 140)


def _plan_lines(model) -> list[str]:
    full = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("trunk.", "head.")))
    lines = [f"pyramid at {model.input_size}: " + ", ".join(f"{s} ({m})" for s, m in sorted(model.pyramid.items(), reverse=True))]
    for r in model.branch_resolutions:
        plan = model.branches[str(r)].plan
        trainable = sum(p.numel() for p in model.branch_parameters(r))
        copied = sum(p.numel() for path in plan.specific for p in model.get_submodule(path).parameters())
        adapter = sum(t.numel() * t.element_size() for t in model.branch_state_dict(r).values())
        removed = ", ".join(f"{p} ({type(model.get_submodule(p)).__name__})" for p, _ in plan.downsampling)
        lines += [
            f"branch {r}: implant after {plan.implant} (stage {plan.stage}), features {'×'.join(map(str, plan.implant_shape))}",
            f"  downsampling removed: {removed}",
            f"  specific modules: {', '.join(plan.specific) or '(none)'} + {len(plan.norms)} per-resolution norm layers",
            f"  parameters: {trainable:,} specific ({100 * trainable / full:.1f} %), {full - copied:,} shared with the trunk",
            f"  adapter size: {adapter / 1e6:.2f} MB",
        ]
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    """``btnet inspect``: the branch plan, costs, and ORL faces routed through ``embed``."""
    import torch

    from . import cost
    from .resize import ResizeSpec, resize_array

    torch.manual_seed(0)
    model = build_model(args.model, args.input_size, args.resolutions).eval()
    print(f"# {args.model}: backbone {model.config()['backbone']}, input {model.input_size}, "
          f"resolutions {model.resolutions}, embedding {model.embed_dim}-d\n")
    print("\n".join(_plan_lines(model)))
    report = cost.measure_costs(model, latency=not args.no_latency, batch_sizes=args.batch_sizes,
                                repeats=args.repeats, warmup=1, threads=args.threads)
    print("\n## Cost per path (the trunk takes low-resolution faces up-sampled to "
          f"{model.input_size})\n")
    print(cost.render_table(report))
    print(cost.describe_settings(report))

    import numpy as np

    faces = orl_faces()
    spec = ResizeSpec("pil", "bilinear", antialias=True)
    images, sizes = [], []
    for i, face in enumerate(faces):
        w = DEMO_WIDTHS[i % len(DEMO_WIDTHS)]
        h = round(w * face.height / face.width)
        images.append(resize_array(np.asarray(face), (h, w), spec))
        sizes.append((w, h))
    vecs = model.embed(images, indicator=args.indicator, strategy=args.strategy)
    taken = Counter((w, h, model.route(w, h, args.indicator, args.strategy)) for w, h in sizes)
    print(f"\n## {len(images)} ORL faces routed by embed() (indicator {args.indicator}, strategy {args.strategy})\n")
    print("| face size (W×H) | faces | path |\n|---|---|---|")
    for (w, h, r), n in sorted(taken.items()):
        print(f"| {w}×{h} | {n} | {'trunk' if r == model.input_size else f'branch {r}'} ({r}×{r}) |")
    print(f"\nembeddings: {tuple(vecs.shape)}, L2 norms {vecs.norm(dim=1).min():.3f}–{vecs.norm(dim=1).max():.3f} "
          "(untrained weights: the routing and shapes are real, the identities are not)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``btnet`` argument parser with every registered command group."""
    parser = argparse.ArgumentParser(prog="btnet", description="Branch-to-Trunk networks for any-resolution face recognition")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="print the branch plan and costs of a model and route sample faces")
    p.add_argument("model", help="a btnet_* zoo name (btnet_resnet50 …) or any timm backbone name")
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--resolutions", type=int_list, default=None, help="branch sides, e.g. 7,14,28 (default: the zoo's / all)")
    p.add_argument("--batch-sizes", type=int_list, default=[1], help="batch sizes to time (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per path (median reported)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-latency", action="store_true", help="skip timing (FLOPs and sizes only)")
    p.add_argument("--indicator", default="max", choices=("max", "min", "avg"))
    p.add_argument("--strategy", default="ceil", choices=("ceil", "near", "floor"))
    p.set_defaults(func=cmd_inspect)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return plain_help(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``btnet`` console script."""
    from .errors import BTNetError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (BTNetError, FileNotFoundError) as err:
        print(f"btnet: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
