"""``btnet analyze upsampling-error|cost``: the paper's analyses for your images and models.

* ``btnet analyze upsampling-error DIR``: bilinear interpolation error estimate and measured
  down-then-up error of the images under ``DIR`` for resolutions 4–112 (Fig. 1).
* ``btnet analyze cost MODEL``: FLOPs, stored parameters and CPU latency per path (Fig. 4/5).

Both print a Markdown table and write Markdown, JSON and PNG files under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from .._parse import int_list

DEFAULT_OUT = "btnet_analysis"


def _print_written(text: str, paths: Sequence[Path]) -> None:
    print(text)
    print("written: " + ", ".join(str(p) for p in paths))


def cmd_upsampling(args: argparse.Namespace) -> int:
    """``btnet analyze upsampling-error``."""
    from ..resize import ResizeSpec
    from .report import upsampling_table, write_upsampling
    from .upsampling import analyse_folder

    report = analyse_folder(args.dir, args.resolutions, ResizeSpec.parse(args.resize), args.size,
                            args.limit, args.batch_size, progress=not args.quiet)
    _print_written(upsampling_table(report), write_upsampling(report, args.out))
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    """``btnet analyze cost``."""
    from .costs import analyse_model
    from .report import cost_markdown, write_costs

    report = analyse_model(args.model, args.input_size, args.resolutions, latency=not args.no_latency,
                           batch_sizes=args.batch_sizes, repeats=args.repeats, warmup=args.warmup,
                           threads=args.threads, progress=not args.quiet)
    _print_written(cost_markdown(report), write_costs(report, args.out))
    return 0


def register(subparsers: Any) -> None:
    """Add ``analyze upsampling-error`` and ``analyze cost`` to the ``btnet`` command."""
    from .upsampling import DEFAULT_RESOLUTIONS, REFERENCE_SIZE

    an = subparsers.add_parser("analyze", help="the paper's analyses: up-sampling error, cost per path")
    sub = an.add_subparsers(dest="analyze_command", required=True)

    u = sub.add_parser("upsampling-error",
                       help="bilinear up-sampling error of your images vs resolution (Fig. 1)")
    u.add_argument("dir", help="image folder (flat or one sub-folder per identity)")
    u.add_argument("--resolutions", type=int_list, default=list(DEFAULT_RESOLUTIONS),
                   help="sides to down-sample to, in [2, --size] "
                        f"(default {','.join(map(str, DEFAULT_RESOLUTIONS))})")
    u.add_argument("--resize", default="cv2:bilinear:noaa",
                   help="down- and up-sampling spec backend:filter:aa|noaa (default cv2:bilinear:noaa)")
    u.add_argument("--size", type=int, default=REFERENCE_SIZE,
                   help=f"reference side; other sizes are scaled to it (default {REFERENCE_SIZE})")
    u.add_argument("--limit", type=int, help="use at most N images, spread evenly over the folder")
    u.add_argument("--batch-size", type=int, default=128, help="images processed together")
    u.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    u.add_argument("--quiet", action="store_true",
                    help="no progress (tqdm bars on a terminal, a line every 30 s otherwise)")
    u.set_defaults(func=cmd_upsampling)

    c = sub.add_parser("cost", help="FLOPs, stored parameters and CPU latency per path (Fig. 4/5)")
    c.add_argument("model", help="a btnet_* zoo name (btnet_iresnet50 …) or any timm backbone name")
    c.add_argument("--input-size", type=int, default=112)
    c.add_argument("--resolutions", type=int_list, help="branch sides, e.g. 7,14,28 (default: the zoo's / all)")
    c.add_argument("--batch-sizes", type=int_list, default=[1], help="batch sizes to time (default 1)")
    c.add_argument("--repeats", type=int, default=20, help="timed runs per path (median reported)")
    c.add_argument("--warmup", type=int, default=3, help="untimed runs per path first")
    c.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    c.add_argument("--no-latency", action="store_true", help="skip timing (FLOPs and sizes only)")
    c.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    c.add_argument("--quiet", action="store_true",
                    help="no progress (tqdm bars on a terminal, a line every 30 s otherwise)")
    c.set_defaults(func=cmd_cost)
